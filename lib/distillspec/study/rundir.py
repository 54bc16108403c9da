"""A study's run directory: every file name in one place, the drafts' names, and the fingerprint that keeps results of
different setups apart.

runs/<preset>/ holds data/ (the prepare stage's prompt sets), drafts/<run>/ (training: trainer output, student/,
train_log.jsonl), records/ (evaluation: per-token and per-step Parquet, one speed row per draft), summary.csv,
results.md, entropy_bins.csv and figures/ (analysis; interim.md before every draft is in), and the executed notebooks.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import datasets

from ..atomic import write_text
from ..config import ADDED_KEYS
from .preset import StudyConfig
from ..trainlog import TRAIN_LOG
from ..errors import DistillSpecError, require
from ..training_settings import WHERE_NOT_WHAT

BASELINE = "baseline"
REPO = Path(__file__).resolve().parents[3]  # the checkout this package is installed from (editable install)


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def train_prompts(self) -> Path:
        return self.root / "data" / "train_prompts.jsonl"

    @property
    def eval_prompts(self) -> Path:
        return self.root / "data" / "eval_prompts.jsonl"

    @property
    def data_summary(self) -> Path:
        return self.root / "data" / "summary.json"

    @property
    def draft_vocab(self) -> Path:
        """The reduced draft vocabulary (config draft_vocab; the evaluation chooses it on first use): the kept ids and
        how."""
        return self.root / "data" / "draft_vocab.json"

    def teacher_text(self, max_new_tokens: int) -> Path:
        """The teacher's completions of the training prompts that feature heads train on (shared by them)."""
        return self.root / "data" / f"teacher_text_{max_new_tokens}.jsonl"

    def draft_dir(self, name: str) -> Path:
        return self.root / "drafts" / name

    def student(self, name: str) -> Path:
        return self.draft_dir(name) / "student"

    def train_log(self, name: str) -> Path:
        return self.draft_dir(name) / TRAIN_LOG

    @property
    def warm_retrain(self) -> Path:
        """Where a warm start is trained again when the baseline's records were imported (--results-from): its
        log and checkpoints, apart from the records' log; the finished model moves to student(BASELINE)."""
        return self.draft_dir(BASELINE) / "retrained"

    @property
    def lock(self) -> Path:
        """Held by the command working on this run directory (run_dir_lock)."""
        return self.root / ".lock"

    @property
    def kernel_log(self) -> Path:
        """What the notebooks' kernels print outside their cells (the terminal stays clean; a dead kernel's last
        words are here)."""
        return self.root / "kernel.log"

    @property
    def records(self) -> Path:
        return self.root / "records"

    def tokens(self, name: str) -> Path:
        return self.records / f"{name}_tokens.parquet"

    def steps(self, name: str) -> Path:
        return self.records / f"{name}_steps.parquet"

    def speed_row(self, name: str) -> Path:
        return self.records / f"{name}_speed.json"

    def timing(self, name: str) -> Path:
        """The evaluation's timed decoding of this draft against the target alone (config speed), one row per batch."""
        return self.records / f"{name}_timing.parquet"

    def manifest(self, name: str) -> Path:
        """Size and checksum of each of the draft's records, written after them: the draft is finished."""
        return self.records / f"{name}_manifest.json"

    @property
    def target_speed(self) -> Path:
        return self.records / "target_speed.json"

    @property
    def speed_table(self) -> Path:
        return self.root / "speed.parquet"

    @property
    def summary(self) -> Path:
        return self.root / "summary.csv"

    @property
    def speed_summary(self) -> Path:
        return self.root / "speed_summary.csv"

    @property
    def seed_summary(self) -> Path:
        """With seeds: per recipe and metric, the mean over seeds, its CI and each seed's value."""
        return self.root / "seed_summary.csv"

    @property
    def differences(self) -> Path:
        """With seeds: every pair of recipes, the difference of their mean alpha_tok with its CI."""
        return self.root / "differences.csv"

    @property
    def entropy_regions(self) -> Path:
        """With seeds: each recipe's acceptance minus the baseline's per teacher-entropy region, and an
        entropy-adaptive recipe's minus each other's per region of its schedule."""
        return self.root / "entropy_regions.csv"

    @property
    def results(self) -> Path:
        return self.root / "results.md"

    @property
    def interim(self) -> Path:
        """A study in parts before every draft is in: results.md's text over the drafts evaluated so far."""
        return self.root / "interim.md"

    @property
    def entropy_bins(self) -> Path:
        return self.root / "entropy_bins.csv"

    @property
    def entropy_bins_by_source(self) -> Path:
        """Acceptance per teacher-entropy bin of each source of the drafts that mix them (a hybrid's lookup and
        trained draft); written only for studies that have such drafts."""
        return self.root / "entropy_bins_by_source.csv"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    def figure(self, kind: str, task: str) -> Path:
        """The analysis figures: kind 'entropy' (acceptance vs teacher entropy), 'training' (training curves) or 'warm'
        (the warm start's curve)."""
        stem = {"entropy": "acceptance_vs_entropy", "training": "training_curves", "warm": "warm_start"}[kind]
        return self.figures / f"{stem}_{task}.png"


def figure_paths(cfg: StudyConfig, run_dir: str | Path) -> dict[str, Path]:
    paths = RunPaths(Path(run_dir))
    kinds = ("entropy", "training") + (("warm",) if cfg.warm_start is not None else ())
    return {kind: paths.figure(kind, cfg.task) for kind in kinds}


def published_records(paths: RunPaths, name: str) -> dict[str, Path]:
    """A finished draft's files in the run directory, by their names in a published records folder (what the analysis
    needs, and what another machine imports); the manifest comes last, as the evaluation writes it last: it marks the
    draft finished."""
    records = [paths.tokens(name), paths.steps(name), paths.timing(name), paths.speed_row(name), paths.manifest(name)]
    return {f"{name}_{TRAIN_LOG}": paths.train_log(name),  # none for the baseline
            **{path.name: path for path in records}}  # timing: only with speed settings


# The timing table's reference row: transformers' own prompt lookup (a study with reference_lookup), kept in the
# records beside the drafts' under this name (its timing, its speed row with the settings chosen, its manifest).
REFERENCE = "transformers_lookup"


def timed_names(cfg: StudyConfig) -> list[str]:
    """Every name the evaluation writes records under: the drafts, then the reference row where the study has one."""
    return [*draft_names(cfg), *([REFERENCE] if cfg.reference_lookup else [])]


def run_names(cfg: StudyConfig) -> dict[str, dict]:
    """Training runs of the study by name -> the config keys each overrides (one per divergence, plus extra_runs)."""
    return cfg.run_overrides()


def draft_names(cfg: StudyConfig) -> list[str]:
    """Every draft the study evaluates, in table order: the undistilled baseline, then each training run."""
    return [BASELINE, *run_names(cfg)]


def known_drafts(cfg: StudyConfig, names: list[str]) -> list[str]:
    """names, refused unless each is one of the study's drafts."""
    unknown = sorted(set(names) - set(draft_names(cfg)))
    require(not unknown, f"Unknown drafts {unknown}; this study's drafts are {draft_names(cfg)}.")
    return list(names)


def draft_groups(cfg: StudyConfig) -> dict[str, list[str]]:
    """Every draft grouped by its recipe, in table order: the baseline alone, then each training run's seeds (a
    study without `seeds` has one draft per group, named as the group)."""
    return {BASELINE: [BASELINE], **{group: list(runs) for group, runs in cfg.run_groups().items()}}


def expand_drafts(cfg: StudyConfig, names: list[str]) -> list[str]:
    """Drafts named on the command line, where a recipe's name means all its seeds (fkl -> fkl_s0, fkl_s1, ...),
    in table order."""
    groups = draft_groups(cfg)
    unknown = sorted(set(names) - set(groups) - set(draft_names(cfg)))
    require(names and not unknown, f"--drafts {','.join(names)}: unknown or empty; this study's drafts are "
            f"{','.join(draft_names(cfg))}" + (f" (or a recipe for all its seeds: {','.join(groups)})"
                                               if cfg.seeds is not None else "") + ".")
    wanted = {d for n in names for d in groups.get(n, [n])}
    return [d for d in draft_names(cfg) if d in wanted]


def finished_drafts(cfg: StudyConfig, run_dir: str | Path) -> list[str]:
    """The study's drafts whose evaluation is complete (the evaluation writes the manifest last), in table order;
    whether their files are intact is manifest.run_damage's question."""
    paths = RunPaths(Path(run_dir))
    return [n for n in draft_names(cfg) if paths.manifest(n).is_file()]


def default_run_dir(cfg: StudyConfig) -> Path:
    """runs/<config name> under the repository (or under the config's run_dir when that is absolute)."""
    return (REPO / cfg.run_dir / cfg.name).resolve()


def made_from(cfg: StudyConfig, name: str) -> dict[str, dict]:
    """The training runs a draft's records depend on, by name, with the settings each changes: its own run and, for a
    hybrid, the run whose trained draft it decodes with (`fallback_run`); none for the baseline or the reference."""
    runs, out, todo = cfg.run_overrides(), {}, [name]
    while todo:
        run = todo.pop()
        if run in runs and run not in out:
            out[run] = runs[run]
            todo.extend(filter(None, [cfg.fallback_run(run)]))
    return out


@contextmanager
def run_dir_lock(run_dir: str | Path, what: str, *, hold: bool = True):
    """One command at a time on a run directory: a second `run`, `train` or `retime` on it is refused while one
    works there, naming it. hold=False on the other processes of one `accelerate launch` (its main process holds
    the lock for all of them; they cannot run without it). The lock goes with the process that holds it, however
    it ends. what: the command, as the refusal names it."""
    import fcntl
    import os

    if not hold:
        yield
        return
    paths = RunPaths(Path(run_dir))
    paths.root.mkdir(parents=True, exist_ok=True)
    with open(paths.lock, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise DistillSpecError(f"{paths.root} is in use by {holder}: one command at a time works on a run "
                                   "directory. Wait for it to finish (or stop it), or use another --run-dir.") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"`python -m distillspec {what}` (pid {os.getpid()})\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def save_prompts(ds: datasets.Dataset, path: Path) -> None:
    write_text("".join(json.dumps(r) + "\n" for r in ds.to_list()), path)


def load_prompt_file(path: Path) -> datasets.Dataset:
    require(path.is_file(), f"{path} is missing: run the prepare stage (01_data, or the pipeline) first.")
    return datasets.Dataset.from_list([json.loads(x) for x in path.read_text().splitlines() if x.strip()])


# Raised whenever what the fingerprint covers changes meaning, so that records of the earlier meaning are refused
# rather than mixed (the published records were carried over to each version once, when it changed). Version 4 is a
# draft's own (`fingerprint(cfg, run_dir, draft)`); version 3, the whole study's, is still accepted on import.
FINGERPRINT_VERSION = 3
DRAFT_FINGERPRINT_VERSION = 4
RUN_LISTS = ("divergences", "extra_runs", "seeds")  # which runs a study has, not what any one of its drafts is


# Keys added after version 3, with their defaults: they enter the fingerprint only when set otherwise, so records
# made before a key existed (with its default's behaviour) stay valid.
ADDED_SINCE_V3 = {**ADDED_KEYS, "reference_lookup": False, "speed_copy_pilot_prompts": None}


def fingerprint(cfg: StudyConfig, run_dir: str | Path, draft: str | None = None) -> str:
    """sha256 of the experiment's config (paths left out) and both prompt sets of the run (the prepare stage's output).
    With draft: of what that draft's records depend on, the study-wide settings and the training runs it is made from
    (`made_from`) in place of the study's run lists, so a study that gains or drops other runs keeps its records;
    without: of the whole config (version 3, as records made before version 4 carry)."""
    paths = RunPaths(Path(run_dir))
    settings = {k: v for k, v in cfg.to_dict().items()
                if k not in WHERE_NOT_WHAT and not (k in ADDED_SINCE_V3 and v == ADDED_SINCE_V3[k])}
    settings["fingerprint_version"] = FINGERPRINT_VERSION
    if draft is not None:
        settings = {k: v for k, v in settings.items() if k not in RUN_LISTS}
        settings.update(fingerprint_version=DRAFT_FINGERPRINT_VERSION, runs=made_from(cfg, draft))
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for prompts in (paths.train_prompts, paths.eval_prompts):
        require(prompts.is_file(), f"{prompts} is missing: run the prepare stage (01_data, or the pipeline) first.")
        digest.update(prompts.read_bytes())
    return digest.hexdigest()
