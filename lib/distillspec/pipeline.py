"""Headless study: execute notebooks 01 -> 02 (per training run) -> 03 -> 04 with papermill into runs/<name>/.

A step is skipped when its outputs exist (so an interrupted run resumes where it stopped, and training resumes
from its last checkpoint); --force reruns everything from scratch. A failing notebook stops the run with the
notebook's name and the cell's error; the executed copy is kept for inspection.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from .config import Config
from .errors import DistillSpecError
from .steps import RunPaths, figure_paths, run_names

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"


@dataclass
class Step:
    notebook: str  # template in notebooks/
    executed: str  # executed copy in the run directory
    outputs: list[Path]  # all present -> the step is done
    parameters: dict = field(default_factory=dict)
    clean: list[Path] = field(default_factory=list)  # removed before a forced rerun


def plan(cfg: Config, config_path: Path, run_dir: Path) -> list[Step]:
    paths = RunPaths(run_dir)
    base = {"config_path": str(config_path), "run_dir": str(run_dir)}
    steps = [Step("01_data.ipynb", "01_data.ipynb", [paths.train_prompts, paths.eval_prompts, paths.data_summary],
                  dict(base), [paths.root / "data"])]
    for name, run in run_names(cfg).items():
        params = {**base, "run_name": name, "divergence": run["divergence"], "beta": run.get("beta", cfg.beta),
                  "sampling": run.get("sampling", "on_policy")}
        steps.append(Step("02_distill.ipynb", f"02_distill_{name}.ipynb", [paths.student(name) / "config.json"],
                          params, [paths.draft_dir(name)]))
    steps.append(Step("03_specdec_eval.ipynb", "03_specdec_eval.ipynb", [paths.root / "speed.parquet"], dict(base),
                      [paths.root / "records", paths.root / "speed.parquet"]))
    figs = figure_paths(cfg, run_dir)
    steps.append(Step("04_entropy_analysis.ipynb", "04_entropy_analysis.ipynb",
                      [paths.results, paths.summary, *figs.values()], dict(base), [paths.figures, paths.results]))
    return steps


def _execute(step: Step, run_dir: Path, kernel: str) -> None:
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    out = run_dir / step.executed
    try:
        pm.execute_notebook(str(NOTEBOOKS / step.notebook), str(out), parameters=step.parameters,
                            cwd=str(NOTEBOOKS), kernel_name=kernel, progress_bar=False)
    except PapermillExecutionError as err:
        raise DistillSpecError(
            f"Notebook {step.executed} failed in cell {err.exec_count}: {err.ename}: {err.evalue}. "
            f"The executed notebook is kept at {out}."
        ) from err
    missing = [str(p) for p in step.outputs if not p.exists()]
    if missing:
        raise DistillSpecError(f"Notebook {step.executed} ran but did not write {missing}.")


def run_pipeline(config_path: str | Path, *, run_dir: str | Path | None = None, force: bool = False,
                 publish_dir: str | Path | None = None, kernel: str = "python3", log=print) -> Path:
    """Run the whole study for one config; return the run directory."""
    config_path = Path(config_path).resolve()
    cfg = Config.from_yaml(config_path)
    run_dir = Path(run_dir or (REPO / cfg.run_dir / cfg.name)).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.to_yaml(run_dir / "config.yaml")
    steps = plan(cfg, config_path, run_dir)
    for step in tqdm(steps, desc=f"pipeline {cfg.name}", unit="notebook"):
        if not force and all(p.exists() for p in step.outputs):
            log(f"skip {step.executed}: outputs exist")
            continue
        if force:
            for p in step.clean:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        log(f"run  {step.executed}")
        _execute(step, run_dir, kernel)
    if publish_dir is not None:
        publish(cfg, run_dir, Path(publish_dir))
    return run_dir


def publish(cfg: Config, run_dir: Path, publish_dir: Path) -> list[Path]:
    """Copy a finished run's figures, results table and the config that made them into publish_dir/<run name>/
    (e.g. figures/offline_gsm8k_full/), so presets of the same task do not overwrite each other."""
    paths = RunPaths(run_dir)
    out = publish_dir / cfg.name
    out.mkdir(parents=True, exist_ok=True)
    sources = [*figure_paths(cfg, run_dir).values(), paths.results, run_dir / "config.yaml"]
    return [Path(shutil.copy2(src, out / src.name)) for src in sources]
