"""A study preset: the setup every draft shares, the base recipe, the training runs (one per divergence, then
`extra_runs`, each once per seed), and how the drafts are evaluated and timed. `StudyConfig.run_config(name)` is the
`Config` of one training run. Presets are YAML files that may start from a `base:` preset."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..config import Config, Recipe, Setup, check_keys, field_names, finish, replace, to_yaml
from ..errors import DistillSpecError, require
from ..losses import check_divergence
from ..runtime import resolve_precision
from ..sampling import SamplingConfig
from ..speed import MAX_GAMMA
from ..warm_start import WarmStart

SPEED_KEYS = ("greedy", "batch_size")


@dataclass
class StudyConfig(Recipe, Setup):
    """A whole study: Setup and the base Recipe (its top-level keys), the runs, the evaluation and the timing."""

    name: str = "offline_gsm8k"
    # the training runs
    divergences: list[str] = field(default_factory=lambda: ["fkl", "rkl", "jsd"])
    extra_runs: list[dict] = field(default_factory=list)  # e.g. [{name: skd, divergence: jsd, rollout: skd}]
    seeds: list[int] | None = None  # train every run once per seed (drafts <run>_s<seed>); evaluation keeps `seed`
    # the baseline draft trained off-policy on the teacher's text before every run (warm_start.WarmStart's keys,
    # e.g. {steps: 600}); null: every run starts from the untrained baseline
    warm_start: dict | None = None
    # evaluation stage (speculative decoding)
    eval_split: str = "test"
    n_eval: int = 64
    gamma: int = 5
    eval_batch_size: int = 16
    eval_precision: str | None = None  # the evaluation's decoding (SD, target-only, timings); None: `precision`
    draft_vocab: int | None = None  # cut every draft's head to the N ids the teacher writes most (None: full head)
    draft_vocab_prompts: int = 64  # training prompts whose teacher completions choose those ids
    # evaluation: decoding speed against target-only generate, per setting, e.g. {greedy: true, batch_size: 1}
    speed: list[dict] = field(default_factory=list)
    speed_prompts: int = 24  # the first N held-out prompts are timed
    speed_gamma: int | str = "auto"  # draft length of the timed runs; auto: the cost model's best for the pilot alpha
    speed_max_gamma: int = 8  # longest draft block the cost model (and auto) considers
    speed_pilot_prompts: int = 4  # training prompts whose SD acceptance feeds gamma 'auto'
    # the same for drafts that copy from the context (prompt lookup, hybrids): how much an answer repeats its prompt
    # varies so much between prompts that 4 of them chose wrong (docs/speed.md); None: speed_pilot_prompts
    speed_copy_pilot_prompts: int | None = None
    # also time transformers' own prompt lookup at each batch-1 setting (a reference row of the timing table), its
    # settings chosen from speed.LOOKUP_GRID on the speed_pilot_prompts training prompts
    reference_lookup: bool = False
    # analysis stage
    min_bin_count: int = 200
    n_bins: int = 12
    run_dir: str = "runs"

    def __post_init__(self):
        finish(self)
        self._validate_study()

    def pilot_prompts(self, copies_context: bool) -> int:
        """How many training prompts the speed pilot of a draft reads (a copy draft's: speed_copy_pilot_prompts)."""
        copy = self.speed_copy_pilot_prompts if copies_context else None
        return self.speed_pilot_prompts if copy is None else copy

    def replace(self, **changes) -> StudyConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self, path=None) -> str:
        return to_yaml(self, path)

    # --- the training runs -------------------------------------------------------------------------------------

    def run_config(self, name: str | None = None, **overrides) -> Config:
        """The Config of training run `name` (None: the base recipe), with any further overrides."""
        changes = {} if name is None else self.run_overrides()[name]
        base = {k: getattr(self, k) for k in field_names(Config) if k not in self._derived}
        return Config(**{**base, **changes, **overrides})

    def run_overrides(self) -> dict[str, dict]:
        """Training runs by name -> the Recipe keys each changes: one run per entry of `divergences`, then each of
        `extra_runs`; with `seeds`, each of those once per seed, named <run>_s<seed>, in run order then seed order."""
        return {name: overrides for runs in self.run_groups().values() for name, overrides in runs.items()}

    def run_groups(self) -> dict[str, dict[str, dict]]:
        """The training runs grouped by recipe: recipe name -> {run name: overrides}. Without `seeds` every group
        is its single run under the recipe's own name."""
        recipes = self._recipes()
        if self.seeds is None:
            return {name: {name: overrides} for name, overrides in recipes.items()}
        return {name: {seed_run_name(name, s): {**overrides, "seed": s} for s in self.seeds}
                for name, overrides in recipes.items()}

    def _recipes(self) -> dict[str, dict]:
        runs = {d: {"divergence": d, "rollout": "on_policy"} for d in self.divergences}
        allowed = field_names(Recipe)
        for i, extra in enumerate(self.extra_runs):
            require(isinstance(extra, dict) and isinstance(extra.get("name"), str) and extra["name"],
                    f"extra_runs[{i}] needs a name, e.g. {{name: skd, divergence: jsd, rollout: skd}}.")
            extra = dict(extra)
            name = extra.pop("name")
            require(name not in runs and name != "baseline",
                    f"extra_runs[{i}]: the name '{name}' is taken (baseline, {', '.join(runs)}); pick another.")
            shared = sorted(k for k in extra if k in field_names(StudyConfig) and k not in allowed)
            require(not shared, f"extra_runs '{name}': {shared} are study-wide settings (the same for every draft, "
                                "or used by the evaluation); set them at the top level, or make a second preset.")
            require(not (self.seeds is not None and "seed" in extra),
                    f"extra_runs '{name}' sets seed, but the study trains every run with each of seeds={self.seeds}; "
                    "leave seed out of the run (or drop `seeds`).")
            try:
                check_keys(Recipe, extra, f"extra_runs '{name}': ")
                overrides = {"divergence": self.divergence, "rollout": "on_policy", **extra}
                self.run_config(**overrides)
            except DistillSpecError as err:
                message = str(err)
                raise DistillSpecError(message if message.startswith("extra_runs") else
                                       f"extra_runs '{name}': {message}") from None
            runs[name] = overrides
        return runs

    # --- evaluation --------------------------------------------------------------------------------------------

    def eval_prompts(self, tokenizer):
        """The held-out prompts the evaluation decodes."""
        return self.run_config().prompt_set(self.eval_split, self.n_eval, tokenizer)

    def train_prompts(self, tokenizer):
        return self.run_config().train_prompts(tokenizer)

    def for_decoding(self) -> StudyConfig:
        """This study as the evaluation loads its models: `eval_precision` in place of `precision` when it is set."""
        return self if self.eval_precision is None else self.replace(precision=self.eval_precision)

    def sampling(self) -> SamplingConfig:
        """The study's sampling: its temperature and top_p."""
        return SamplingConfig(temperature=self.temperature, top_p=self.top_p)

    def speed_settings(self) -> list[SamplingConfig]:
        """Each timed setting's sampling: greedy, or the study's temperature and top_p."""
        return [SamplingConfig(greedy=True) if s.get("greedy", True) else self.sampling() for s in self.speed]

    def _validate_study(self) -> None:
        for name in self.divergences:
            check_divergence(name)
        require(self.n_eval >= 1, f"n_eval={self.n_eval} must be >= 1.")
        for key in ("gamma", "eval_batch_size"):
            require(getattr(self, key) >= 1, f"{key}={getattr(self, key)} must be >= 1.")
        if self.seeds is not None:
            require(isinstance(self.seeds, list) and self.seeds and len(set(self.seeds)) == len(self.seeds) and all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in self.seeds),
                f"seeds={self.seeds!r} must be a list of distinct integers >= 0, e.g. [0, 1, 2] (or null: one run "
                "per divergence, with `seed`).")
        if self.eval_precision is not None:
            resolve_precision(self.eval_precision)
        if self.warm_start is not None:
            warm = WarmStart.of(self.warm_start)
            require(self.draft_kind == "model",
                    "warm_start trains the study's baseline draft: the base recipe's draft_kind must be 'model'.")
            self.warm_start = warm.as_dict()  # every key written out: the fingerprint sees what was trained
        self._validate_speed()
        require(self.draft_kind != "hybrid", "draft_kind: hybrid is a run of a study (extra_runs, with hybrid_of "
                "naming the run whose trained draft it falls back on), not the base recipe: the baseline is the "
                "undistilled draft.")
        recipes = self._recipes()
        for recipe in recipes:
            self._check_fallback(recipe, recipes)

    def _check_fallback(self, recipe: str, recipes: dict[str, dict]) -> None:
        """A hybrid run names, with hybrid_of, a run of this study whose kind saves a trained draft."""
        run = self.run_config(**recipes[recipe])
        if run.draft_kind != "hybrid":
            return
        from ..drafts import kind_named  # loads transformers' models: only studies with a hybrid pay for it

        require(run.hybrid_of in recipes and run.hybrid_of != recipe,
                f"run '{recipe}' is a hybrid: set hybrid_of to the run of this study whose trained draft it uses "
                f"where prompt lookup has no match (one of {[r for r in recipes if r != recipe]}; got "
                f"{run.hybrid_of!r}).")
        inner = self.run_config(**recipes[run.hybrid_of]).draft_kind
        require(kind_named(inner).marker is not None,
                f"run '{recipe}': hybrid_of '{run.hybrid_of}' is a {inner} run, which trains no draft to fall back "
                "on; name a standalone draft or feature head run.")

    def trains(self, name: str) -> bool:
        """Whether run `name` trains a draft of its own (not prompt lookup, not a hybrid over another run's)."""
        from ..drafts import kind_named

        return kind_named(self.run_config(name).draft_kind).marker is not None

    def fallback_run(self, name: str) -> str | None:
        """The training run whose draft run `name` decodes with beside prompt lookup (a hybrid's hybrid_of, of the
        same seed in a study with seeds), or None."""
        run = self.run_config(name)
        if run.hybrid_of is None:
            return None
        return run.hybrid_of if self.seeds is None else seed_run_name(run.hybrid_of, run.seed)

    def _validate_speed(self) -> None:
        require(not self.reference_lookup or any(s.get("batch_size", 1) == 1 for s in self.speed),
                "reference_lookup times transformers' prompt lookup, which decodes one prompt at a time: add a "
                "batch-1 setting to `speed` (e.g. {greedy: true, batch_size: 1}), or set reference_lookup: false.")
        require(self.draft_vocab is None or self.draft_vocab >= 1,
                f"draft_vocab={self.draft_vocab} must be >= 1 token ids (or null: the draft keeps its full head).")
        require(self.draft_vocab_prompts >= 1, f"draft_vocab_prompts={self.draft_vocab_prompts} must be >= 1.")
        require(isinstance(self.speed, list), f"speed={self.speed!r} must be a list of settings, e.g. "
                                              "[{greedy: true, batch_size: 1}].")
        for i, setting in enumerate(self.speed):
            require(isinstance(setting, dict) and set(setting) <= set(SPEED_KEYS),
                    f"speed[{i}]={setting!r}: each setting is a mapping of {list(SPEED_KEYS)}, e.g. "
                    "{greedy: true, batch_size: 1} (greedy false samples at the study's temperature and top_p).")
            batch = setting.get("batch_size", 1)
            require(isinstance(batch, int) and not isinstance(batch, bool) and batch >= 1,
                    f"speed[{i}]: batch_size={batch!r} must be an integer >= 1.")
        require(self.speed_prompts >= 1 and self.speed_pilot_prompts >= 1,
                f"speed_prompts={self.speed_prompts} and speed_pilot_prompts={self.speed_pilot_prompts} must be >= 1.")
        require(self.speed_copy_pilot_prompts is None or (isinstance(self.speed_copy_pilot_prompts, int)
                                                          and self.speed_copy_pilot_prompts >= 1),
                f"speed_copy_pilot_prompts={self.speed_copy_pilot_prompts!r} must be an integer >= 1 (or null: "
                "speed_pilot_prompts, as for every other draft).")
        require(1 <= self.speed_max_gamma <= MAX_GAMMA,
                f"speed_max_gamma={self.speed_max_gamma} must be in [1, {MAX_GAMMA}] (draft tokens per step).")
        if self.speed_gamma != "auto":
            require(isinstance(self.speed_gamma, int) and not isinstance(self.speed_gamma, bool)
                    and 1 <= self.speed_gamma <= self.speed_max_gamma,
                    f"speed_gamma={self.speed_gamma!r} must be 'auto' (chosen by the cost model) or an integer in "
                    f"[1, speed_max_gamma={self.speed_max_gamma}].")

    # --- files ---------------------------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: dict) -> StudyConfig:
        check_keys(cls, data)
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> StudyConfig:
        """A preset file: its keys over those of its `base:` preset, if it names one; overrides (taken as given,
        relative to the current directory) over both."""
        return cls.from_dict({**read_preset(Path(path)), **overrides})


def pair_config(config: str | Path | None = None, *, teacher: str | None = None,
                keep_layers: int | None = None) -> StudyConfig:
    """The study whose pair a command-line tool evaluates: a preset (`--config`), or the teacher and derived-draft
    depth given as flags (the defaults otherwise)."""
    given = {k: v for k, v in (("teacher", teacher), ("student_keep_layers", keep_layers)) if v is not None}
    if config is not None:
        require(not given, f"--config {config} sets the teacher and the baseline draft; drop "
                           f"{', '.join('--' + k.replace('student_', '').replace('_', '-') for k in given)}.")
        return StudyConfig.from_yaml(config)
    return StudyConfig(**given)


def seed_run_name(run: str, seed: int) -> str:
    """The training run of recipe `run` with seed `seed` in a study with `seeds`."""
    return f"{run}_s{seed}"


def read_preset(path: Path, _through: tuple = ()) -> dict:
    """A preset's keys over those of its `base:` preset (a path relative to it), recursively, so presets state only
    what they change; a key given here replaces the base's value whole (lists and mappings too). Paths in each file
    (data_source, a local teacher / student folder) are relative to that file."""
    require(path.is_file(), f"Config file not found: {path} (presets live in configs/).")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise DistillSpecError(f"{where}: not valid YAML ({getattr(err, 'problem', None) or err}); fix the "
                               "file (presets live in configs/).") from None
    require(data is not None, f"{path} is empty: a preset needs at least a name and what it changes, e.g. "
                              "`base: offline_gsm8k.yaml` and `name: mine` (presets live in configs/).")
    require(isinstance(data, dict), f"{path} must hold a YAML mapping of config keys, not a "
                                    f"{type(data).__name__}.")
    source = data.get("data_source")
    if source not in (None, "hub") and not Path(source).is_absolute():
        data["data_source"] = str((path.parent / source).resolve())
    for key in ("teacher", "student"):  # a local model folder next to the config (else a hub id or alias)
        value = data.get(key)
        if isinstance(value, str) and not Path(value).is_absolute() and (path.parent / value).exists():
            data[key] = str((path.parent / value).resolve())
    base = data.pop("base", None)
    if base is None:
        return data
    base_path = (path.parent / str(base)).resolve()
    require(base_path not in _through and base_path != path.resolve(),
            f"{path}: base: {base} leads back to a preset already read ({base_path}); presets may not form a cycle.")
    return {**read_preset(base_path, (*_through, path.resolve())), **data}


__all__ = ["SPEED_KEYS", "StudyConfig", "pair_config", "read_preset", "seed_run_name"]
