"""Headless study: execute notebooks 01 -> 02 (per training run) -> 03 -> 04 with papermill into runs/<name>/.

A step is skipped when its outputs exist (so an interrupted run resumes where it stopped, and training resumes
from its last checkpoint); --force reruns everything from scratch. A failing notebook stops the run with the
notebook's name and the cell's error; the executed copy is kept for inspection.

A study run in parts runs a subset of its drafts at a time (drafts=...), publishes their records, and
a later run imports them (results_from=...; see handoff.py); 04 runs once every draft is finished.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from .preset import StudyConfig
from ..data import data_dir_env_resolved
from ..errors import DistillSpecError, TrainingInterrupted, require
from ..drafts import kind_named
from ..threads import thread_env
from .handoff import bind_config, import_records, publish_records
from .manifest import intact, run_damage
from .rundir import (BASELINE, REFERENCE, REPO, RunPaths, default_run_dir, draft_names, expand_drafts,
                     figure_paths, finished_drafts, run_dir_lock, run_names, timed_names)


def notebooks_dir() -> Path:
    """The workbook's notebook templates: $DISTILLSPEC_NOTEBOOKS, else notebooks/ of the checkout this package is
    installed from (make install: editable)."""
    path = Path(os.environ.get("DISTILLSPEC_NOTEBOOKS", REPO / "notebooks")).resolve()
    require((path / "01_data.ipynb").is_file(), f"The workbook's notebooks are not at {path}: install distillspec "
            "from its repository (make install, or pip install -e .) or set DISTILLSPEC_NOTEBOOKS to the folder "
            "holding 01_data.ipynb ... 04_entropy_analysis.ipynb.")
    return path


@dataclass
class Step:
    """One notebook execution of the plan."""

    notebook: str  # template in notebooks/
    executed: str  # executed copy in the run directory
    outputs: list[Path]  # all present -> the step is done
    parameters: dict = field(default_factory=dict)
    clean: list[Path] = field(default_factory=list)  # removed before a forced rerun
    done_instead: list[Path] = field(default_factory=list)  # all present -> also done (training: the draft's results)
    waiting_for: Callable[[], list[str]] | None = None  # drafts that must be finished first (analysis: all of them)
    damaged: Callable[[], list[str]] | None = None  # outputs present but not intact (evaluation: against the manifests)
    then: Callable[[], str] | None = None  # after the step, run or skipped; returns a line for the log
    threads: str = "work"  # the kernel's OpenMP setting (threads.py): "timing" for the stage that times decoding

    def done(self, run_dir: Path) -> bool:
        """Outputs present, and the executed copy (when there is one) ran to its end: a notebook that failed after
        writing its outputs (say, in a plot cell) runs again rather than leaving its error in the run."""
        if _failed(run_dir / self.executed) or (self.damaged is not None and self.damaged()):
            return False
        return all(p.exists() for p in self.outputs) or bool(self.done_instead) and all(
            p.exists() for p in self.done_instead)


def _failed(executed: Path) -> bool:
    import nbformat

    if not executed.is_file():
        return False
    return bool(nbformat.read(executed, as_version=4).metadata.get("papermill", {}).get("exception"))


def plan(cfg: StudyConfig, config_path: Path, run_dir: Path, drafts: list[str] | None = None,
         results_from: Path | None = None) -> list[Step]:
    """The notebooks to execute: 01, 02 per training run, 03, 04; with drafts, only those drafts' 02 and 03.
    results_from: a published records folder whose finished drafts (any of the study's, not only those selected)
    are imported right after 01, so the part of a study that finishes the last drafts also runs 04."""
    paths = RunPaths(run_dir)
    drafts = draft_names(cfg) if drafts is None else drafts
    base = {"config_path": str(config_path), "run_dir": str(run_dir)}

    def import_finished() -> str:
        imported = import_records(cfg, run_dir, results_from, timed_names(cfg))
        return f"imported finished drafts from {results_from}: {','.join(imported) or 'none'}"

    steps = [Step("01_data.ipynb", "01_data.ipynb", [paths.train_prompts, paths.eval_prompts, paths.data_summary],
                  dict(base), [paths.root / "data"], then=import_finished if results_from is not None else None)]
    if cfg.warm_start is not None:  # the baseline trained first: every run starts from it
        steps.append(Step("02_distill.ipynb", f"02_distill_{BASELINE}.ipynb",
                          [paths.student(BASELINE) / kind_named("model").marker],
                          {**base, "run_name": BASELINE}, [paths.draft_dir(BASELINE)],
                          done_instead=[paths.manifest(n) for n in drafts]))  # nothing left to train or evaluate
    for name in run_names(cfg):
        if name not in drafts:
            continue
        params = {**base, "run_name": name}  # 02 applies the run's overrides from the config (train_draft)
        marker = kind_named(cfg.run_config(name).draft_kind).marker  # the file 02 saves last
        if marker is None:  # a draft of a kind that trains and saves nothing (prompt lookup): evaluated directly
            continue
        steps.append(Step("02_distill.ipynb", f"02_distill_{name}.ipynb", [paths.student(name) / marker],
                          params, [paths.draft_dir(name)], done_instead=[paths.manifest(name)]))
    selected = None if drafts == draft_names(cfg) else drafts
    reference = [paths.manifest(REFERENCE)] if cfg.reference_lookup else []  # transformers' prompt lookup, timed once
    steps.append(Step("03_specdec_eval.ipynb", "03_specdec_eval.ipynb", [paths.manifest(n) for n in drafts] + reference,
                      {**base, "drafts": selected}, [paths.records, paths.speed_table], threads="timing",
                      damaged=lambda: [p for n in drafts if paths.manifest(n).is_file() for p in run_damage(paths, n)]))
    steps.append(Step("04_entropy_analysis.ipynb", "04_entropy_analysis.ipynb",
                      [paths.results, paths.summary, *figure_paths(cfg, run_dir).values()], dict(base),
                      [paths.figures, paths.results],
                      waiting_for=lambda: [n for n in draft_names(cfg) if n not in finished_drafts(cfg, run_dir)]))
    return steps


def _kernel_config():
    """Encrypt the kernel's local sockets (CurveZMQ) where pyzmq and the kernel support it; else ipykernel warns,
    once per notebook, that it runs over TCP without encryption."""
    import zmq
    from traitlets.config import Config as TraitletsConfig

    return TraitletsConfig({"KernelManager": {"transport_encryption": "auto"}} if zmq.has("curve") else {})


def notebook_warnings(executed: Path) -> list[str]:
    """The warnings an executed notebook printed (its stderr outputs' `...Warning: message` lines), each once: what
    changes a study (fewer prompts than asked, bf16 without bf16 instructions, a collapsed draft) must reach the
    terminal, not only the notebook."""
    import re

    import nbformat

    found = []
    for cell in nbformat.read(executed, as_version=4).cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                for match in re.finditer(r"(?m)^(?:\S*:\d+: )?(\w+Warning): (.+)$", out.get("text", "")):
                    line = f"{match.group(1)}: {match.group(2).strip()}"
                    if line not in found:
                        found.append(line)
    return found


_KERNELS: list = []  # the kernel managers of the notebooks this process is executing (one at a time)


def _kernel_manager_class(log: Path, threads: str):
    """jupyter_client's kernel manager, with the kernel's own stdout and stderr (ipykernel's lines at shutdown, a
    native crash's last words) appended to `log` instead of the terminal, OpenMP set for the stage (threads.py)
    before torch starts in it, and each started kernel listed in _KERNELS so that a stop signal can reach it."""
    from jupyter_client.manager import AsyncKernelManager

    class RunKernelManager(AsyncKernelManager):
        async def _async_launch_kernel(self, kernel_cmd, **kw):
            env = dict(kw.get("env") or os.environ)
            env.update(thread_env(threads, env))
            with open(log, "ab") as sink:  # the kernel keeps its own copy of the descriptor
                await super()._async_launch_kernel(kernel_cmd, **{**kw, "env": env, "stdout": sink, "stderr": sink})
            _KERNELS.append(self)

    return RunKernelManager


class _Stop:
    """SIGTERM or a first Ctrl-C while a notebook runs: passed on to its kernel as an interrupt (a training
    checkpoints and stops; other work stops where it is), and the run then ends with one line and exit code 130.
    With no kernel running, or at a second Ctrl-C, the run stops at once."""

    def __init__(self):
        self.signal: int | None = None

    def __call__(self, signum, frame):
        running = [km for km in _KERNELS if km.has_kernel and km.provisioner.pid]
        if not running or self.signal is not None and signum == signal.SIGINT:
            raise TrainingInterrupted(f"stopped by {signal.Signals(signum).name}; run the same command again to "
                                      "resume (finished steps are kept).")
        self.signal = signum
        for km in running:
            os.killpg(km.provisioner.pid, signal.SIGINT)  # the kernel leads its own process group

    @contextmanager
    def catching(self):
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        before = {s: signal.signal(s, self) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield self
        finally:
            for s, handler in before.items():
                signal.signal(s, handler)


def _execute(step: Step, run_dir: Path, kernel: str, stop: _Stop) -> None:
    import papermill as pm
    from nbclient.exceptions import DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    out = run_dir / step.executed
    log = RunPaths(run_dir).kernel_log
    with open(log, "a") as f:
        f.write(f"--- {step.executed}\n")
    try:
        notebooks = notebooks_dir()
        pm.execute_notebook(str(notebooks / step.notebook), str(out), parameters=step.parameters,
                            cwd=str(notebooks), kernel_name=kernel, progress_bar=False, config=_kernel_config(),
                            kernel_manager_class=_kernel_manager_class(log, step.threads))
    except PapermillExecutionError as err:
        if stop.signal is not None:
            raise TrainingInterrupted(
                f"{step.executed} stopped by {signal.Signals(stop.signal).name} ({err.ename}: {err.evalue}); run "
                "the same command again to resume (finished steps and checkpoints are kept).") from err
        raise DistillSpecError(
            f"Notebook {step.executed} failed in cell {err.exec_count}: {err.ename}: {err.evalue}. "
            f"The executed notebook is kept at {out}."
        ) from err
    except DeadKernelError as err:
        raise DistillSpecError(
            f"The kernel running {step.executed} died ({err}); what it printed last is at the end of {log} (a kernel "
            f"killed for memory prints nothing). The executed notebook so far is kept at {out}; run again to resume."
        ) from err
    finally:
        _KERNELS.clear()
        if out.is_file():
            sign_notebook(out)
    if stop.signal is not None:
        raise TrainingInterrupted(f"stopped by {signal.Signals(stop.signal).name} after {step.executed}; run the "
                                  "same command again to resume.")
    missing = [str(p) for p in step.outputs if not p.exists()]
    if missing:
        raise DistillSpecError(f"Notebook {step.executed} ran but did not write {missing}.")


def sign_notebook(path: Path) -> None:
    """Record an executed notebook as trusted in this user's Jupyter signature database (nbformat's notary, the
    one JupyterLab checks), so it opens with its widgets and progress bars as they ran, not their text stand-ins.
    The notebooks are the pipeline's own output; a copy moved to another machine or user opens untrusted."""
    import nbformat
    from nbformat.sign import NotebookNotary

    NotebookNotary().sign(nbformat.read(path, as_version=4))


def run_pipeline(config_path: str | Path, *, run_dir: str | Path | None = None, force: bool = False,
                 publish_dir: str | Path | None = None, drafts: list[str] | None = None,
                 results_from: str | Path | None = None, kernel: str = "python3", log=print) -> Path:
    """Run the study for one config (drafts: a subset of its drafts; results_from: a published records folder
    to import finished drafts from); return the run directory.

    Relative paths (the arguments, and $DISTILLSPEC_DATA_DIR) mean relative to the current directory: they are
    made absolute here, before any notebook runs in notebooks/."""
    config_path = Path(config_path).resolve()
    results_from = Path(results_from).resolve() if results_from is not None else None
    publish_dir = Path(publish_dir).resolve() if publish_dir is not None else None
    with data_dir_env_resolved():  # the kernels inherit it
        cfg = StudyConfig.from_yaml(config_path)
        if drafts is not None:
            drafts = expand_drafts(cfg, drafts)
        require(not (force and results_from), "--force reruns everything; it cannot be combined with --results-from.")
        run_dir = Path(run_dir).resolve() if run_dir else default_run_dir(cfg)
        run_dir.mkdir(parents=True, exist_ok=True)
        with run_dir_lock(run_dir, "run"), _Stop().catching() as stop:
            bind_config(cfg, run_dir, replace=force)
            waited = False
            for step in tqdm(plan(cfg, config_path, run_dir, drafts, results_from), desc=f"pipeline {cfg.name}",
                             unit="notebook"):
                waiting = step.waiting_for() if step.waiting_for else []
                if waiting:
                    log(f"wait {step.executed}: drafts {','.join(waiting)} are not evaluated yet (run them with "
                        "--drafts, here or later elsewhere with --results-from)")
                    waited = True
                    continue
                if not force and step.done(run_dir):
                    log(f"skip {step.executed}: outputs exist")
                else:
                    if force:
                        for p in step.clean:
                            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                    log(f"run  {step.executed}")
                    started = time.perf_counter()
                    _execute(step, run_dir, kernel, stop)
                    log(f"done {step.executed} in {(time.perf_counter() - started) / 60:.1f} min")
                    for warning in notebook_warnings(run_dir / step.executed):
                        log(f"  warning in {step.executed}: {warning}")
                if step.then:
                    log(step.then())
            if publish_dir is not None:
                publish(cfg, run_dir, publish_dir)  # writes interim.md where 04 has not run
            elif waited and finished_drafts(cfg, run_dir):
                _write_interim(cfg, run_dir)
            if waited and RunPaths(run_dir).interim.is_file():
                log(f"interim results over the drafts evaluated so far: {RunPaths(run_dir).interim}")
            return run_dir


def _write_interim(cfg: StudyConfig, run_dir: Path) -> Path:
    """interim.md over the drafts finished so far (stages.interim_results); imported here, where it is needed, so
    that the command line starts without loading the models' libraries."""
    from .stages import interim_results

    interim_results(cfg, run_dir)
    return RunPaths(run_dir).interim


def publish(cfg: StudyConfig, run_dir: Path, publish_dir: Path) -> list[Path]:
    """Copy a run's figures, results table and the config that made them into publish_dir/<run name>/ (e.g.
    figures/offline_gsm8k_full/, so presets of the same task do not overwrite each other), and every finished
    draft's records into its records/ (what 04 needs, and what a later run imports). Where 04 has not run on these
    records (a study in parts, or after `retime`), a table and figures published before are removed: they describe
    other records; interim.md, made again from the finished drafts, stands in for the table until 04 runs."""
    paths = RunPaths(run_dir)
    finished = finished_drafts(cfg, run_dir)
    damaged = [p for n in finished for p in run_damage(paths, n)]
    require(not damaged, f"Not publishing {run_dir}: {'; '.join(damaged)}. Run `python -m distillspec run` for this "
                         "study again first: it evaluates damaged drafts again.")
    out = publish_dir / cfg.name
    out.mkdir(parents=True, exist_ok=True)
    sources = [paths.config]
    made_by_04 = [*figure_paths(cfg, run_dir).values(), paths.results]
    if paths.results.is_file():  # 04 has run
        sources += made_by_04
        (out / paths.interim.name).unlink(missing_ok=True)
    else:
        for stale in made_by_04:
            (out / stale.name).unlink(missing_ok=True)
        if finished:
            sources.append(_write_interim(cfg, run_dir))
    copied = [Path(shutil.copy2(src, out / src.name)) for src in sources]
    reference = [REFERENCE] if cfg.reference_lookup and intact(paths, REFERENCE) else []  # transformers' lookup
    return copied + publish_records(run_dir, out / "records", finished + reference)
