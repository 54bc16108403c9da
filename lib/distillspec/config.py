"""One experiment config (YAML-loadable) shared by the trainer, the evaluation, the notebooks and the pipeline."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .acceptance import TopKAcceptance
from .data import load_prompts, task_spec
from .errors import DistillSpecError, require
from .losses import AdaptiveBeta, check_divergence
from .sampling import SamplingConfig

SAMPLING_MODES = ("on_policy", "skd")
# Keys every draft of a study shares (the data, the target, the evaluation): extra_runs may not override them.
STUDY_KEYS = ("name", "teacher", "teacher_8bit", "precision", "task", "data_source", "train_split", "eval_split",
              "n_train", "n_eval", "max_article_tokens", "data_seed", "temperature", "top_p", "max_new_tokens",
              "gamma", "eval_batch_size", "divergences", "extra_runs", "min_bin_count", "n_bins", "run_dir",
              "eval_precision", "draft_vocab", "draft_vocab_prompts", "speed", "speed_prompts", "speed_gamma",
              "speed_max_gamma", "speed_pilot_prompts", "seeds")
SPEED_KEYS = ("greedy", "batch_size")


@dataclass
class Config:
    """Everything one study run needs. None means "the task default" where a task default exists."""

    name: str = "offline_gsm8k"
    # models
    teacher: str = "smollm2-135m-instruct"
    student: str | None = None  # a loadable model; None = derived from the teacher (draft_from_teacher)
    student_keep_layers: int | list[int] = 10
    student_layer_strategy: str = "first"
    teacher_8bit: bool = False  # load the teacher with bitsandbytes 8-bit weights (CUDA only)
    precision: str = "auto"  # auto (bf16 mixed precision on a GPU, fp32 on CPU), fp32, or bf16 (fp32 weights, bf16 autocast)
    lora: dict | None = None  # peft LoraConfig kwargs, e.g. {r: 16, lora_alpha: 32, target_modules: [q_proj, v_proj]}
    # data
    task: str = "gsm8k"
    data_source: str | None = None  # 'hub', a jsonl directory, or None ($DISTILLSPEC_DATA_DIR, else hub)
    train_split: str = "train"
    eval_split: str = "test"
    n_train: int | None = 2048
    n_eval: int = 64
    max_article_tokens: int = 512
    data_seed: int = 0
    # objective
    divergence: str = "jsd"
    beta: float = 0.5
    adaptive_beta: dict | None = None  # AdaptiveBeta kwargs: h_low, h_high, low, high, high_beta
    sampling: str = "on_policy"  # or 'skd'
    lmbda: float = 1.0  # GKD mixing: fraction of steps on the student's own rollouts; the rest on teacher samples
    skd_top_k: int = 25
    skd_gamma: int = 4
    temperature: float | None = None  # sampling temperature; task default (GSM8K 0.6, CNN/DM 0.7)
    loss_temperature: float | None = None  # divides both models' logits in the loss; None = `temperature` (TRL)
    top_p: float = 0.95
    max_new_tokens: int | None = None  # task default (GSM8K 312, CNN/DM 128)
    train_max_new_tokens: int | None = None  # rollout length while training (default: max_new_tokens)
    # optimisation
    learning_rate: float = 1e-4
    batch_size: int = 8  # global batch: sequences per optimiser step over all processes (same experiment on 1 or 8 GPUs)
    micro_batch_size: int | None = None  # most sequences per forward per process; the rest is gradient accumulation
    max_steps: int = 100
    warmup_steps: int = 0
    lr_scheduler: str = "constant"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = False
    chunk_size: int = 256  # loss chunk (positions): 19% of the naive peak memory at 1.00x time (README, loss_bench)
    seed: int = 0  # training (rollouts, data order) and the evaluation's sampling
    seeds: list[int] | None = None  # train every run once per seed (drafts <run>_s<seed>); evaluation keeps `seed`
    logging_steps: int = 5
    save_steps: int = 25
    # evaluation (speculative decoding)
    gamma: int = 5
    eval_batch_size: int = 16
    eval_precision: str | None = None  # precision of 03's decoding (SD, target-only, timings); None: `precision`
    draft_vocab: int | None = None  # cut every draft's head to the N ids the teacher writes most (None: full head)
    draft_vocab_prompts: int = 64  # training prompts whose teacher completions choose those ids
    # decoding speed against target-only generate (03), one entry per setting, e.g. {greedy: true, batch_size: 1}
    speed: list[dict] = field(default_factory=list)
    speed_prompts: int = 24  # the first N held-out prompts are timed
    speed_gamma: int | str = "auto"  # draft length of the timed runs; auto: the cost model's best for the pilot alpha
    speed_max_gamma: int = 8  # longest draft block the cost model (and auto) considers
    speed_pilot_prompts: int = 4  # training prompts whose SD acceptance feeds gamma 'auto'
    # pipeline
    divergences: list[str] = field(default_factory=lambda: ["fkl", "rkl", "jsd"])
    extra_runs: list[dict] = field(default_factory=list)  # e.g. [{name: skd, divergence: jsd, sampling: skd, lmbda: 0.5}]
    min_bin_count: int = 200
    n_bins: int = 12
    run_dir: str = "runs"

    def __post_init__(self):
        self._coerce_numbers()
        self.validate()

    def _coerce_numbers(self) -> None:
        """YAML 1.1 reads `5e-5` (no dot) as a string; accept it as a number, refuse anything else clearly."""
        for f in dataclasses.fields(self):
            kind = {"float": float, "float | None": float, "int": int, "int | None": int}.get(f.type)
            value = getattr(self, f.name)
            if kind is None or value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
                continue
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = None
            if isinstance(value, bool) or number is None or (kind is int and not number.is_integer()):
                raise DistillSpecError(f"{f.name}={value!r} must be {'an integer' if kind is int else 'a number'}.")
            setattr(self, f.name, kind(number))

    @property
    def task_temperature(self) -> float:
        return self.temperature if self.temperature is not None else task_spec(self.task).temperature

    @property
    def divergence_temperature(self) -> float:
        """Temperature of the distributions the loss compares (1.0 matches the T=1 acceptance the logs report)."""
        return self.loss_temperature if self.loss_temperature is not None else self.task_temperature

    @property
    def task_max_new_tokens(self) -> int:
        return self.max_new_tokens if self.max_new_tokens is not None else task_spec(self.task).max_new_tokens

    @property
    def rollout_max_new_tokens(self) -> int:
        return self.train_max_new_tokens or self.task_max_new_tokens

    def prompt_set(self, which: str, tokenizer):
        """The study's training ('train') or held-out ('eval') prompts, as this config defines them."""
        split, n = {"train": (self.train_split, self.n_train), "eval": (self.eval_split, self.n_eval)}[which]
        return load_prompts(self.task, split, n, source=self.data_source, seed=self.data_seed, tokenizer=tokenizer,
                            max_article_tokens=self.max_article_tokens)

    def adaptive(self) -> AdaptiveBeta | None:
        return AdaptiveBeta(**self.adaptive_beta) if self.adaptive_beta else None

    def validate(self) -> None:
        task_spec(self.task)
        check_divergence(self.divergence, self.beta)
        for name in self.divergences:
            check_divergence(name)
        self.adaptive()
        require(self.sampling in SAMPLING_MODES, f"sampling='{self.sampling}' must be one of {SAMPLING_MODES}.")
        if self.sampling == "skd":
            TopKAcceptance(self.skd_top_k)
            require(self.skd_gamma >= 1, f"skd_gamma={self.skd_gamma} must be >= 1.")
        require(0 <= self.lmbda <= 1, f"lmbda={self.lmbda} must be in [0, 1] (1 = pure on-policy).")
        require(self.task_temperature > 0, f"temperature={self.temperature} must be > 0.")
        require(self.divergence_temperature > 0, f"loss_temperature={self.loss_temperature} must be > 0.")
        require(0 < self.top_p <= 1, f"top_p={self.top_p} must be in (0, 1].")
        require(self.n_train is None or self.n_train >= 1, f"n_train={self.n_train} must be >= 1 (or null: all).")
        require(self.n_eval >= 1, f"n_eval={self.n_eval} must be >= 1.")
        for key in ("batch_size", "max_steps", "gamma", "save_steps", "logging_steps", "eval_batch_size"):
            require(getattr(self, key) >= 1, f"{key}={getattr(self, key)} must be >= 1.")
        require(self.learning_rate > 0, f"learning_rate={self.learning_rate} must be > 0.")
        require(self.micro_batch_size is None or self.micro_batch_size >= 1,
                f"micro_batch_size={self.micro_batch_size} must be >= 1 (or null: no gradient accumulation).")
        self._validate_speed()
        if self.seeds is not None:
            require(isinstance(self.seeds, list) and self.seeds and len(set(self.seeds)) == len(self.seeds) and all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in self.seeds),
                f"seeds={self.seeds!r} must be a list of distinct integers >= 0, e.g. [0, 1, 2] (or null: one run "
                "per divergence, with `seed`).")
        from .runtime import resolve_precision

        resolve_precision(self.precision)
        if self.eval_precision is not None:
            resolve_precision(self.eval_precision)
        self.run_overrides()

    def _validate_speed(self) -> None:
        from .speed import MAX_GAMMA

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
        require(1 <= self.speed_max_gamma <= MAX_GAMMA,
                f"speed_max_gamma={self.speed_max_gamma} must be in [1, {MAX_GAMMA}] (draft tokens per step).")
        if self.speed_gamma != "auto":
            require(isinstance(self.speed_gamma, int) and not isinstance(self.speed_gamma, bool)
                    and 1 <= self.speed_gamma <= self.speed_max_gamma,
                    f"speed_gamma={self.speed_gamma!r} must be 'auto' (chosen by the cost model) or an integer in "
                    f"[1, speed_max_gamma={self.speed_max_gamma}].")

    def for_decoding(self) -> Config:
        """This config as 03 loads its models: `eval_precision` in place of `precision` when it is set."""
        return self if self.eval_precision is None else self.replace(precision=self.eval_precision)

    def speed_settings(self) -> list[SamplingConfig]:
        """Each timed setting's sampling: greedy, or the study's temperature and top_p."""
        return [SamplingConfig(greedy=True) if s.get("greedy", True)
                else SamplingConfig(temperature=self.task_temperature, top_p=self.top_p) for s in self.speed]

    def run_overrides(self) -> dict[str, dict]:
        """The study's training runs by name -> the config keys each changes: one run per entry of `divergences`,
        then each of `extra_runs` (any training key may be overridden; study-wide keys may not); with `seeds`, each
        of those once per seed, named <run>_s<seed>, in run order then seed order."""
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
        runs = {d: {"divergence": d, "sampling": "on_policy"} for d in self.divergences}
        allowed = sorted({f.name for f in dataclasses.fields(self)} - set(STUDY_KEYS))
        for i, extra in enumerate(self.extra_runs):
            require(isinstance(extra, dict) and isinstance(extra.get("name"), str) and extra["name"],
                    f"extra_runs[{i}] needs a name, e.g. {{name: skd, divergence: jsd, sampling: skd}}.")
            extra = dict(extra)
            name = extra.pop("name")
            require(name not in runs and name != "baseline",
                    f"extra_runs[{i}]: the name '{name}' is taken (baseline, {', '.join(runs)}); pick another.")
            fixed = sorted(set(extra) & set(STUDY_KEYS))
            require(not fixed, f"extra_runs '{name}': {fixed} are study-wide settings (the same for every draft, "
                               "or used by the evaluation); set them at the top level, or make a second preset.")
            require(not (self.seeds is not None and "seed" in extra),
                    f"extra_runs '{name}' sets seed, but the study trains every run with each of seeds={self.seeds}; "
                    "leave seed out of the run (or drop `seeds`).")
            unknown = sorted(set(extra) - set(allowed))
            require(not unknown, f"extra_runs '{name}': unknown keys {unknown}; a run may override {allowed}.")
            overrides = {"divergence": self.divergence, "sampling": "on_policy", **extra}
            try:
                dataclasses.replace(self, divergences=[], extra_runs=[], **overrides)
            except DistillSpecError as err:
                raise DistillSpecError(f"extra_runs '{name}': {err}") from None
            runs[name] = overrides
        return runs

    def replace(self, **changes) -> Config:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            from .atomic import write_text

            write_text(text, path)
        return text

    @classmethod
    def from_dict(cls, data: dict) -> Config:
        known = {f.name for f in dataclasses.fields(cls)}
        require("gradient_accumulation_steps" not in data, "gradient_accumulation_steps is derived now: batch_size "
                "is the global batch per optimiser step, and micro_batch_size caps the sequences per forward on each "
                "process (e.g. batch_size: 32, micro_batch_size: 8 is 4 accumulation steps on one GPU, 1 on four).")
        unknown = sorted(set(data) - known)
        if unknown:
            raise DistillSpecError(f"Unknown config keys {unknown}; valid keys: {sorted(known)}.")
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> Config:
        """A preset file: its keys over those of its `base:` preset, if it names one; overrides (taken as given,
        relative to the current directory) over both."""
        return cls.from_dict({**read_preset(Path(path)), **overrides})


def seed_run_name(run: str, seed: int) -> str:
    """The training run of recipe `run` with seed `seed` in a study with `seeds`."""
    return f"{run}_s{seed}"


def read_preset(path: Path, _through: tuple = ()) -> dict:
    """A preset's keys over those of its `base:` preset (a path relative to it), recursively, so presets state only
    what they change; a key given here replaces the base's value whole (lists and mappings too). Paths in each file
    (data_source, a local teacher / student folder) are relative to that file."""
    require(path.is_file(), f"Config file not found: {path} (presets live in configs/).")
    data = yaml.safe_load(path.read_text()) or {}
    require(isinstance(data, dict), f"{path} must hold a YAML mapping of config keys.")
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
