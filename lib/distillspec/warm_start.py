"""A warm start: before on-policy distillation, bring a draft derived from the teacher close to it off-policy, on
the teacher's own text (word-level distillation: the divergence between full next-token distributions at every
position of the teacher's completions, `lmbda` 0 in GKD's terms), so a study can start where a pretrained draft
would (the reference study's Qwen3-0.6B accepts about 0.7 of its positions before any distillation).

The teacher's text is sampled once and kept (teacher_text.py), its top hidden states are computed once, and each
step costs one student forward and backward and the two heads over the completion positions. Every `eval_every`
steps the draft decodes held-out prompts against the teacher in the study's speculative decoding (its gamma,
sampling and cut head), and the train log records alpha_pos and alpha_tok: the warm start's curve.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .config import Config, coerce_numbers
from .errors import require
from .forward import final_hidden, position_ids
from .losses import check_divergence, chunked_distill_loss
from .models import save_pretrained_atomic
from .offline_loop import train_offline
from .sampling import SamplingConfig
from .teacher_text import text_with_features
from .trainlog import TRAIN_LOG, DistillResult
from .validation import served_acceptance
from .training_settings import RETRAIN_FIX, claim, clear_training_output


@dataclass(frozen=True)
class WarmStart:
    """A study's warm start (its `warm_start` key): the baseline draft trained off-policy before every run."""

    steps: int = 600
    learning_rate: float = 1e-3
    warmup_steps: int = 20
    lr_scheduler: str = "cosine"
    batch_size: int = 8
    divergence: str = "fkl"  # FKL on the teacher's text is word-level KD; any of losses.DIVERGENCES
    text_prompts: int = 1024  # training prompts the teacher answers (the first N)
    text_tokens: int = 128  # new tokens per answer
    text_samples: int = 1  # answers per prompt (a task with few training prompts, CNN/DM's 284, samples several)
    eval_every: int = 100  # steps between points of the curve (0: only before and after)
    eval_prompts: int = 16  # held-out prompts each point decodes (the first N of the evaluation's)

    def __post_init__(self):
        for key in ("steps", "batch_size", "text_prompts", "text_tokens", "text_samples", "eval_prompts"):
            require(isinstance(getattr(self, key), int) and getattr(self, key) >= 1,
                    f"warm_start: {key}={getattr(self, key)!r} must be an integer >= 1.")
        require(self.learning_rate > 0, f"warm_start: learning_rate={self.learning_rate} must be > 0.")
        require(0 <= self.warmup_steps < self.steps,
                f"warm_start: warmup_steps={self.warmup_steps} must be in [0, steps={self.steps}).")
        require(self.eval_every >= 0, f"warm_start: eval_every={self.eval_every} must be >= 0 (0: the curve has "
                                      "only its first and last points).")
        check_divergence(self.divergence)

    @classmethod
    def of(cls, data: dict | None) -> WarmStart | None:
        """A preset's `warm_start` mapping checked (unknown keys named), or None where the study has none."""
        if data is None:
            return None
        require(isinstance(data, dict), f"warm_start={data!r} must be a mapping of {sorted(cls.__dataclass_fields__)} "
                                        "(e.g. {steps: 600}), or null for no warm start.")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        require(not unknown, f"warm_start: unknown keys {unknown}; valid keys: {sorted(cls.__dataclass_fields__)}.")
        return cls(**coerce_numbers(cls, data, "warm_start: "))

    def as_dict(self) -> dict:
        return asdict(self)


def warm_loss(student, batch: dict, teacher_head: torch.Tensor, divergence: str, temperature: float,
              chunk_size: int) -> dict:
    """The divergence at every completion position of a text batch (text_batch), with the logged statistics: the
    student's top hidden states through its head against the teacher's features through the teacher's head."""
    ids, mask, comp = batch["ids"], batch["mask"], batch["completion"]
    hidden = final_hidden(student, ids, mask, position_ids(mask))  # [B, T, H]
    scored = comp[:, 1:] * mask[:, :-1]  # position t predicts token t+1: scored where t+1 is a completion token
    stats = chunked_distill_loss(hidden[:, :-1], batch["features"][:, :-1], student.get_output_embeddings().weight,
                                 teacher_head, scored, divergence=divergence, temperature=temperature,
                                 chunk_size=chunk_size)
    n = max(1, stats.n)
    return {"loss": stats.loss, "expected_accept": stats.expected_accept_sum / n,
            "teacher_entropy": stats.teacher_entropy_sum / n, "student_entropy": stats.student_entropy_sum / n}


def train_warm_start(cfg: Config, warm: WarmStart, output_dir: str | os.PathLike, *, target, tokenizer,
                     prompts: list[list[int]], eval_prompts: list[list[int]], gamma: int,
                     draft_vocab_ids: list[int] | None = None, text_path: str | os.PathLike | None = None,
                     resume: bool = True, student=None) -> DistillResult:
    """Train the study's baseline draft (`student`, or derived from the teacher by cfg) on the teacher's answers to
    the first warm.text_prompts of `prompts` (rendered ids), text_samples answers each; resumable. The draft is
    saved to <output_dir>/student, a loadable model with the teacher's tokenizer, its log (loss, expected
    acceptance, the curve) beside it."""
    from .pair import standalone_draft

    require(cfg.draft_kind == "model", "A warm start trains a standalone draft; this config's draft_kind is "
                                       f"'{cfg.draft_kind}'.")
    require(len(prompts) > 0, "No training prompts for the warm start: the dataset is empty.")
    require(len(eval_prompts) > 0, "No held-out prompts for the warm start's curve: the evaluation set is empty.")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        clear_training_output(out)
    claim(out, warm_settings(cfg, warm), RETRAIN_FIX)
    sampling = SamplingConfig(temperature=cfg.temperature, top_p=cfg.top_p)
    asked = prompts[: warm.text_prompts] * warm.text_samples  # each pass over the prompts samples with other seeds
    text = text_with_features(target, tokenizer, asked, temperature=cfg.temperature, top_p=cfg.top_p,
                              max_new_tokens=warm.text_tokens, seed=cfg.data_seed,
                              path=text_path if text_path is not None else out / "teacher_text.jsonl")
    teacher_head = target.get_output_embeddings().weight.detach()
    if student is None:
        torch.manual_seed(cfg.seed)
        student = standalone_draft(cfg, target, tokenizer, training=True)

    def step_loss(pick: list[int]) -> dict:
        batch = text.batch(pick)
        return warm_loss(student, {k: v.to(student.device) for k, v in batch.items()}, teacher_head,
                         warm.divergence, cfg.loss_temperature or 1.0, cfg.chunk_size)

    def curve_point() -> dict:
        return served_acceptance(target, student, eval_prompts[: warm.eval_prompts], gamma=gamma, sampling=sampling,
                                 max_new_tokens=cfg.max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                                 draft_vocab_ids=draft_vocab_ids, seed=cfg.seed)

    settings = cfg.optimisation(max_steps=warm.steps, batch_size=warm.batch_size, learning_rate=warm.learning_rate,
                                warmup_steps=warm.warmup_steps, lr_scheduler=warm.lr_scheduler)
    steps, resumed_from = train_offline(student, len(text.rows), step_loss, settings, out, resume=resume,
                                        desc="warm start", evaluate=curve_point, eval_every=warm.eval_every)
    save_pretrained_atomic(student, tokenizer, out / "student")
    return DistillResult(out / "student", out, out / TRAIN_LOG, resumed_from)


def warm_settings(cfg: Config, warm: WarmStart) -> dict:
    """What a warm start is trained with: the run's config and the warm start's own keys."""
    return {**cfg.to_dict(), "warm_start": asdict(warm)}


def warm_curve(log):
    """The warm start's curve from its train log: step, alpha_pos, alpha_tok at each evaluation."""
    return log.dropna(subset=["alpha_pos"])[["step", "alpha_pos", "alpha_tok"]].reset_index(drop=True)


__all__ = ["WarmStart", "train_warm_start", "warm_curve", "warm_loss"]
