"""What one training run needs: the pair and the data it trains on (`Setup`, shared by every draft of a study) and
how the draft is trained (`Recipe`, what a study's runs may change). `Config` is both, the argument of `distill`;
a study preset (`distillspec.study.preset.StudyConfig`) makes one per training run. Task defaults (sampling
temperature, new tokens) are resolved once, when a config is made."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .acceptance import TopKAcceptance
from .data import load_prompts, task_spec
from .errors import DistillSpecError, require
from .losses import AdaptiveBeta, check_divergence
from .runtime import resolve_precision

ROLLOUTS = ("on_policy", "skd")
# a standalone small LM, a feature head over the teacher (eagle.py), prompt lookup (lookup.py: nothing trained), or
# lookup beside a trained draft (given as its folder where the draft is loaded)
DRAFT_KINDS = ("model", "eagle", "lookup", "hybrid")
HEAD_FEATURES = ("top", "fused")  # what a feature head reads of its target (eagle.py)
SELECT_CHECKPOINT = ("last", "validation")  # which checkpoint a run keeps as its draft (validation.py)
# Keys whose None means "derived from another key": the task's defaults, then the sampling settings.
_DERIVED = ("temperature", "max_new_tokens", "loss_temperature", "train_max_new_tokens")


@dataclass
class Setup:
    """The pair, the data and the sampling: the same for every draft of a study (its evaluation uses them too)."""

    teacher: str = "smollm2-135m-instruct"
    teacher_8bit: bool = False  # load the teacher with bitsandbytes 8-bit weights (CUDA only)
    precision: str = "auto"  # auto (bf16 mixed precision on a GPU, fp32 on CPU), fp32, or bf16 (fp32 weights, bf16 autocast)
    task: str = "gsm8k"
    data_source: str | None = None  # 'hub', a jsonl directory, or None ($DISTILLSPEC_DATA_DIR, else hub)
    train_split: str = "train"
    n_train: int | None = 2048
    max_article_tokens: int = 512
    data_seed: int = 0
    temperature: float | None = None  # sampling temperature; None: the task's (GSM8K 0.6, CNN/DM 0.7)
    top_p: float = 0.95
    max_new_tokens: int | None = None  # None: the task's (GSM8K 312, CNN/DM 128)


@dataclass
class Optimisation:
    """How every training loop optimises (TRL's trainer for drafts, the plain loop for heads and warm starts), its
    checkpoints and logs: one group of keys, read by each loop from here."""

    learning_rate: float = 1e-4
    batch_size: int = 8  # global batch: sequences per optimiser step over all processes (same experiment on 1 or 8 GPUs)
    micro_batch_size: int | None = None  # most sequences per forward per process; the rest is gradient accumulation
    max_steps: int = 100
    warmup_steps: int = 0
    lr_scheduler: str = "constant"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0  # training (rollouts, data order) and the evaluation's sampling
    logging_steps: int = 5
    save_steps: int = 25
    save_minutes: float = 5.0  # also checkpoint after this much wall time since the last checkpoint (slow steps)

    def optimisation(self, **changes) -> Optimisation:
        """This group's values alone, with changes (a warm start's own steps and rate): what a loop takes."""
        return Optimisation(**{**{k: getattr(self, k) for k in field_names(Optimisation)}, **changes})


@dataclass
class HeadKeys:
    """What only a feature head's training reads (draft_kind: eagle)."""

    head_feature_weight: float = 1.0  # weight of the feature regression beside the divergence
    head_unroll: int = 2  # positions of a drafted block trained per sequence (1: the teacher's features only)
    head_text_prompts: int | None = None  # training prompts the teacher writes for; None: max_steps x batch_size
    head_features: str = "top"  # 'top': the target's top hidden state; 'fused': a low, a middle and a high layer's
    # (EAGLE-3), projected to one feature by the head
    head_depth_decay: float = 1.0  # loss weight of unrolled pass d, proportional to decay ** (d - 1); 1: equal


@dataclass
class CopyKeys:
    """What prompt lookup and the hybrid read (draft_kind lookup or hybrid; lookup.py)."""

    lookup_ngram: int = 3  # the longest n-gram of a row's latest text matched against its earlier text
    lookup_recent: bool = False  # copy after the n-gram's most recent earlier occurrence (False: its first)
    hybrid_of: str | None = None  # draft_kind hybrid in a study: the run whose trained draft it uses where no match


@dataclass
class Validation:
    """Served acceptance while training (validation.py): every `validation_steps` steps the draft decodes
    `validation_prompts` prompts of the training split against the teacher and the log records alpha_pos; with
    select_checkpoint 'validation' the draft kept is the checkpoint where it was highest."""

    validation_prompts: int = 0  # 0: no validation (the log has only the trained batches' expected acceptance)
    validation_steps: int | None = None  # None: every save_steps (each checkpoint is validated)
    validation_gamma: int = 4  # the study's gamma, as the evaluation decodes
    select_checkpoint: str = "last"  # 'last', or 'validation': the validated checkpoint with the highest alpha_pos

    def validation_every(self) -> int:
        return self.validation_steps or self.save_steps


# Keys added to the training settings after runs were first saved, with their defaults: a run saved before a key
# existed did what its default does, so its saved settings match these settings with the key at its default.
ADDED_KEYS = {**{f.name: f.default for group in (Validation, CopyKeys) for f in dataclasses.fields(group)},
              "head_features": "top", "head_depth_decay": 1.0}


@dataclass
class Recipe(Validation, CopyKeys, HeadKeys, Optimisation):
    """How one draft is trained: the student, the objective, the rollouts, and the optimisation and head keys."""

    draft_kind: str = "model"  # 'model': a small LM (`student`); 'eagle': a feature head over the teacher (eagle.py)
    student: str | None = None  # a loadable model; None = derived from the teacher (draft_from_teacher)
    student_keep_layers: int | list[int] = 10
    student_layer_strategy: str = "first"
    lora: dict | None = None  # peft LoraConfig kwargs, e.g. {r: 16, lora_alpha: 32, target_modules: [q_proj, v_proj]}
    divergence: str = "jsd"
    beta: float = 0.5
    adaptive_beta: dict | None = None  # AdaptiveBeta kwargs: h_low, h_high, low, high, high_beta
    rollout: str = "on_policy"  # the student's own samples, or 'skd': its proposals corrected by the teacher
    lmbda: float = 1.0  # GKD mixing: fraction of steps on the student's own rollouts; the rest on teacher samples
    skd_top_k: int = 25
    skd_gamma: int = 4
    loss_temperature: float | None = None  # divides both models' logits in the loss; None: `temperature` (TRL)
    train_max_new_tokens: int | None = None  # rollout length while training; None: `max_new_tokens`
    gradient_checkpointing: bool = False
    chunk_size: int = 256  # loss chunk (positions): 19% of the naive peak memory at 1.00x time (README, loss_bench)


def field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def finish(cfg) -> None:
    """Shared by every config class: numbers from YAML made numbers, derived keys resolved, every key checked."""
    for key, value in coerce_numbers(type(cfg), {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
                                     ).items():
        setattr(cfg, key, value)
    cfg._derived = frozenset(k for k in _DERIVED if getattr(cfg, k) is None)  # re-derived by replace()
    spec = task_spec(cfg.task)
    if cfg.temperature is None:
        cfg.temperature = spec.temperature
    if cfg.max_new_tokens is None:
        cfg.max_new_tokens = spec.max_new_tokens
    if cfg.loss_temperature is None:
        cfg.loss_temperature = cfg.temperature
    if cfg.train_max_new_tokens is None:
        cfg.train_max_new_tokens = cfg.max_new_tokens
    validate_run(cfg)


def replace(cfg, **changes):
    """dataclasses.replace that derives again what was derived (a new task brings its own temperature)."""
    return dataclasses.replace(cfg, **{**{k: None for k in cfg._derived}, **changes})


def coerce_numbers(cls, data: dict, where: str = "") -> dict:
    """data with the numbers YAML 1.1 reads as strings (`5e-5`, no dot) made numbers, by the types of cls's fields;
    anything else where a number belongs is refused, naming the key (where: a prefix for the message)."""
    out = dict(data)
    for f in dataclasses.fields(cls):
        kind = {"float": float, "float | None": float, "int": int, "int | None": int}.get(f.type)
        value = out.get(f.name)
        if kind is None or value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = None
        if isinstance(value, bool) or number is None or (kind is int and not number.is_integer()):
            raise DistillSpecError(f"{where}{f.name}={value!r} must be {'an integer' if kind is int else 'a number'}.")
        out[f.name] = kind(number)
    return out


def validate_run(cfg) -> None:
    """Every Setup and Recipe key of cfg, with a message that names the key and what it may be."""
    check_divergence(cfg.divergence, cfg.beta)
    if cfg.adaptive_beta:
        AdaptiveBeta(**cfg.adaptive_beta)
    require(cfg.rollout in ROLLOUTS, f"rollout='{cfg.rollout}' must be one of {ROLLOUTS}.")
    require(cfg.draft_kind in DRAFT_KINDS, f"draft_kind='{cfg.draft_kind}' must be one of {DRAFT_KINDS}.")
    if cfg.draft_kind == "eagle":
        require(cfg.rollout == "on_policy" and cfg.adaptive_beta is None and cfg.lora is None,
                "A feature head (draft_kind: eagle) trains on its teacher's text with one divergence: SKD rollouts, "
                "adaptive_beta and lora apply to standalone drafts only.")
        require(cfg.head_unroll >= 1, f"head_unroll={cfg.head_unroll} must be >= 1.")
        require(cfg.head_feature_weight >= 0, f"head_feature_weight={cfg.head_feature_weight} must be >= 0.")
        require(cfg.head_features in HEAD_FEATURES,
                f"head_features='{cfg.head_features}' must be one of {HEAD_FEATURES}.")
        require(0 < cfg.head_depth_decay <= 1, f"head_depth_decay={cfg.head_depth_decay} must be in (0, 1]: the "
                "weight of each unrolled pass relative to the one before.")
        require(cfg.head_text_prompts is None or cfg.head_text_prompts >= 1,
                f"head_text_prompts={cfg.head_text_prompts} must be >= 1 (or null: max_steps x batch_size).")
    if cfg.rollout == "skd":
        TopKAcceptance(cfg.skd_top_k)
        require(cfg.skd_gamma >= 1, f"skd_gamma={cfg.skd_gamma} must be >= 1.")
    require(0 <= cfg.lmbda <= 1, f"lmbda={cfg.lmbda} must be in [0, 1] (1 = pure on-policy).")
    require(cfg.temperature > 0, f"temperature={cfg.temperature} must be > 0.")
    require(cfg.loss_temperature > 0, f"loss_temperature={cfg.loss_temperature} must be > 0.")
    require(0 < cfg.top_p <= 1, f"top_p={cfg.top_p} must be in (0, 1].")
    require(cfg.n_train is None or cfg.n_train >= 1, f"n_train={cfg.n_train} must be >= 1 (or null: all).")
    for key in ("batch_size", "max_steps", "save_steps", "logging_steps", "max_new_tokens", "train_max_new_tokens"):
        require(getattr(cfg, key) >= 1, f"{key}={getattr(cfg, key)} must be >= 1.")
    require(cfg.learning_rate > 0, f"learning_rate={cfg.learning_rate} must be > 0.")
    require(cfg.save_minutes > 0, f"save_minutes={cfg.save_minutes} must be > 0 (minutes of training between "
                                  "checkpoints, besides every save_steps).")
    validate_validation(cfg)
    require(isinstance(cfg.lookup_ngram, int) and cfg.lookup_ngram >= 1,
            f"lookup_ngram={cfg.lookup_ngram!r} must be an integer >= 1 (the longest n-gram prompt lookup matches).")
    require(isinstance(cfg.lookup_recent, bool), f"lookup_recent={cfg.lookup_recent!r} must be true or false (copy "
            "after the n-gram's most recent earlier occurrence, or after its first).")
    require(cfg.hybrid_of is None or cfg.draft_kind == "hybrid",
            f"hybrid_of='{cfg.hybrid_of}' names the trained run a hybrid falls back on; this run's draft_kind is "
            f"'{cfg.draft_kind}' (use draft_kind: hybrid, or drop hybrid_of).")
    require(cfg.micro_batch_size is None or cfg.micro_batch_size >= 1,
            f"micro_batch_size={cfg.micro_batch_size} must be >= 1 (or null: no gradient accumulation).")
    resolve_precision(cfg.precision)


def validate_validation(cfg) -> None:
    require(cfg.validation_prompts >= 0, f"validation_prompts={cfg.validation_prompts} must be >= 0 (0: no "
                                         "validation while training).")
    require(cfg.validation_steps is None or cfg.validation_steps >= 1,
            f"validation_steps={cfg.validation_steps} must be >= 1 (or null: every save_steps).")
    require(cfg.validation_gamma >= 1, f"validation_gamma={cfg.validation_gamma} must be >= 1.")
    require(cfg.select_checkpoint in SELECT_CHECKPOINT,
            f"select_checkpoint='{cfg.select_checkpoint}' must be one of {SELECT_CHECKPOINT}.")
    if cfg.select_checkpoint == "validation":
        require(cfg.validation_prompts > 0, "select_checkpoint 'validation' chooses the checkpoint by its served "
                "acceptance on validation prompts: set validation_prompts (e.g. 16) too.")
        require(cfg.save_steps % cfg.validation_every() == 0,
                f"select_checkpoint 'validation' keeps a validated checkpoint: save_steps={cfg.save_steps} must be "
                f"a multiple of validation_steps={cfg.validation_every()} (or leave validation_steps null).")


def check_keys(cls, data: dict, where: str = "") -> None:
    """Refuse keys cls does not have, naming them and the valid ones."""
    known = set(field_names(cls))
    require("gradient_accumulation_steps" not in data, "gradient_accumulation_steps is derived: batch_size is the "
            "global batch per optimiser step, and micro_batch_size caps the sequences per forward on each process "
            "(e.g. batch_size: 32, micro_batch_size: 8 is 4 accumulation steps on one GPU, 1 on four).")
    unknown = sorted(set(data) - known)
    if unknown:
        raise DistillSpecError(f"{where}Unknown config keys {unknown}; valid keys: {sorted(known)}.")


@dataclass
class Config(Recipe, Setup):
    """One training run: what `distill` needs. Made by a study (`StudyConfig.run_config`) or directly."""

    def __post_init__(self):
        finish(self)

    def validate(self) -> None:
        validate_run(self)

    def replace(self, **changes) -> Config:
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def adaptive(self) -> AdaptiveBeta | None:
        return AdaptiveBeta(**self.adaptive_beta) if self.adaptive_beta else None

    def prompt_set(self, split: str, n: int | None, tokenizer):
        """Prompts of this config's task and data from `split` (at most n; None: all), chat messages only."""
        return load_prompts(self.task, split, n, source=self.data_source, seed=self.data_seed, tokenizer=tokenizer,
                            max_article_tokens=self.max_article_tokens)

    def train_prompts(self, tokenizer):
        """The training prompt set (no answers, no highlights)."""
        return self.prompt_set(self.train_split, self.n_train, tokenizer)

    def validation_set(self, tokenizer):
        """The validation prompts (validation.py): the training split's next `validation_prompts` after the
        n_train that training uses; where training uses the whole split (n_train null, or a split with no more
        rows), its last ones, which training also sees. Never the evaluation's held-out prompts."""
        require(self.validation_prompts >= 1, "This config has no validation prompts (validation_prompts: 0).")
        everything = self.prompt_set(self.train_split, None if self.n_train is None else
                                     self.n_train + self.validation_prompts, tokenizer)
        return everything.select(range(max(0, len(everything) - self.validation_prompts), len(everything)))

    def to_yaml(self, path=None) -> str:
        return to_yaml(self, path)

    @classmethod
    def from_dict(cls, data: dict) -> Config:
        check_keys(cls, data)
        return cls(**data)


def to_yaml(cfg, path=None) -> str:
    import yaml

    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    if path is not None:
        from .atomic import write_text

        write_text(text, path)
    return text


__all__ = ["Config", "DRAFT_KINDS", "HeadKeys", "Optimisation", "ROLLOUTS", "Recipe", "Setup", "coerce_numbers"]
