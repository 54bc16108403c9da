"""Training a feature head (eagle.py) on its teacher's text: the EAGLE recipe with this project's divergences.

Data: the teacher's own samples on the training prompts (`train_max_new_tokens` each, the study's sampling), made
once and kept in the run's output directory (`teacher_text.jsonl`, appended batch by batch, so an interrupted run
keeps what it sampled), and the teacher's top hidden states over them (computed once per run, in memory).

Loss per completion position: the divergence of on-policy training (FKL, RKL, JSD, TVD) between the teacher's next-token
distribution and the head's, plus `head_feature_weight` x smooth-L1 between the head's feature and the teacher's
(EAGLE's regression). The head is trained on blocks as it drafts them (`head_unroll` > 1, EAGLE-3's training-time
test): after the first pass on the teacher's features, each further pass consumes the head's own features of the
pass before, one position later, as in a drafted block; pass d weighs `head_depth_decay` ** (d - 1) in the loss
(weights summing to 1). A fused head (`head_features: fused`) reads three layers of the teacher in its first pass
and is scored against the teacher's top state, as any head. The block's tokens are the teacher's text, which is what a
lossless decoder emits; the head's own tokens are not sampled (a sampled token would need a teacher pass per
position). With a reduced vocabulary (`draft_vocab`) both distributions are taken over the kept ids, the ones the
head scores when decoding.

The teacher's text and features: teacher_text.py; the loop (AdamW, checkpoints, resume, train_log.jsonl):
offline_loop.py; the head is saved atomically (eagle.save_head). With `validation_prompts` the head decodes them
against the teacher every `validation_steps` steps (validation.py; eval_alpha_pos in the log), and with
select_checkpoint 'validation' the head saved is the one validated best.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F

from .config import Config
from .eagle import EagleHead, fused_layers, save_head
from .errors import require
from .forward import position_ids
from .losses import chunked_distill_loss
from .offline_loop import train_offline
from .teacher_text import text_with_features
from .trainlog import TRAIN_LOG, DistillResult
from .validation import VALIDATION_METRIC
from .training_settings import RETRAIN_FIX, claim, clear_training_output

TEACHER_TEXT = "teacher_text.jsonl"


def head_loss(head: EagleHead, batch: dict, cfg: Config, head_rows: torch.Tensor) -> dict:
    """The head's loss on one batch (see the module doc): pass d (d = 1..unroll) consumes token t+d beside the
    feature of the pass before at t (the teacher's for d = 1) and is scored against the teacher at t+d."""
    ids, mask, comp = batch["ids"], batch["mask"], batch["completion"]
    stored = batch["features"].to(head.dtype)  # [B, T, H], or [B, T, 3H + H] for a fused head (teacher_features)
    hidden = head.hidden_size
    teacher = stored[..., -hidden:]  # [B, T, H] the teacher's top state: what each pass is scored against
    positions = position_ids(mask)  # the decoder's numbering: real tokens only
    features = stored[:, :-1, :-hidden] if head.feature_layers else teacher[:, :-1]
    weights = [cfg.head_depth_decay ** d for d in range(cfg.head_unroll)]
    weights = [w / sum(weights) for w in weights]
    totals = {"loss": 0.0, "divergence": 0.0, "feature_loss": 0.0}
    first = None
    for depth, weight in enumerate(weights, start=1):
        width = ids.shape[1] - depth  # pairs (token t+depth, feature t) for t = 0 .. T-1-depth
        if width < 1:
            break
        pair_mask = mask[:, depth:] * mask[:, :width]
        out = head(ids[:, depth:], features[:, :width], attention_mask=pair_mask,  # pair t sits at t + depth - 1
                   position_ids=positions[:, depth - 1 : depth - 1 + width], use_cache=False)
        goal = teacher[:, depth:]  # [B, width, H] the teacher's feature at t+depth
        scored = torch.zeros_like(pair_mask)  # the output at t predicts token t+depth+1: a completion token
        scored[:, :-1] = comp[:, depth + 1:] * pair_mask[:, :-1]
        stats = chunked_distill_loss(out.normed, goal, head_rows, head_rows, scored, divergence=cfg.divergence,
                                     beta=cfg.beta, temperature=cfg.loss_temperature or 1.0,
                                     chunk_size=cfg.chunk_size)
        keep = scored.bool()
        feature_loss = F.smooth_l1_loss(out.normed[keep].float(), goal[keep].float()) if keep.any() else \
            out.normed.sum() * 0.0
        term = stats.loss + cfg.head_feature_weight * feature_loss
        totals["loss"] = totals["loss"] + weight * term
        totals["divergence"] += weight * float(stats.loss.detach())
        totals["feature_loss"] += weight * float(feature_loss.detach())
        first = stats if first is None else first
        features = out.hidden[:, :-1]  # the next pass drafts one position further on the head's own features
    totals["expected_accept"] = first.expected_accept_sum / max(1, first.n)
    totals["teacher_entropy"] = first.teacher_entropy_sum / max(1, first.n)
    return totals


def train_head(cfg: Config, output_dir: str | os.PathLike, *, target, tokenizer, prompts: list[list[int]],
               draft_vocab_ids: list[int] | None = None, resume: bool = True,
               text_path: str | os.PathLike | None = None) -> DistillResult:
    """Train a feature head for `target` on its text for the first `head_text_prompts` of `prompts` (rendered token
    ids); resumable with the same settings (kept in <output_dir>/config.yaml; resume=False starts again). The head
    is saved to <output_dir>/student (eagle.save_head) with the train log beside it. text_path: where the teacher's
    text is kept (default <output_dir>/teacher_text.jsonl; a study shares one file between its heads): it is sampled
    with `data_seed`, like the prompt sets."""
    require(cfg.draft_kind == "eagle", f"train_head trains feature heads; this config's draft_kind is "
            f"'{cfg.draft_kind}' (use distill for a standalone draft).")
    require(len(prompts) > 0, "No training prompts for the feature head: the dataset is empty.")
    from .runtime import world_size

    require(world_size() == 1, "A feature head trains on one process (it is one layer); run it without "
                               "accelerate launch / torchrun.")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        clear_training_output(out)
    claim(out, cfg.to_dict(), RETRAIN_FIX)
    n_text = cfg.head_text_prompts or cfg.max_steps * cfg.batch_size
    # the layers the head will read (EagleHead's own choice, fused_layers): the head is built after the text, under
    # the training seed, as before fused heads existed
    layers = fused_layers(target.config.num_hidden_layers) if cfg.head_features == "fused" else ()
    text = text_with_features(target, tokenizer, prompts[:n_text], temperature=cfg.temperature, top_p=cfg.top_p,
                              max_new_tokens=cfg.train_max_new_tokens, seed=cfg.data_seed,
                              path=text_path if text_path is not None else out / TEACHER_TEXT, layers=layers)

    torch.manual_seed(cfg.seed)
    head = EagleHead(target, features=cfg.head_features).float()
    weight = target.get_output_embeddings().weight.detach().float()
    head_rows = weight if draft_vocab_ids is None else weight[torch.tensor(draft_vocab_ids, device=weight.device)]

    def step_loss(pick: list[int]) -> dict:
        return head_loss(head, {k: v.to(head.device) for k, v in text.batch(pick).items()}, cfg, head_rows)

    validate = _validation(cfg, target, tokenizer, head, draft_vocab_ids) if cfg.validation_prompts else None
    steps, resumed_from = train_offline(head, len(text.rows), step_loss, cfg.optimisation(), out, resume=resume,
                                        desc="head training", evaluate=validate, eval_every=cfg.validation_every(),
                                        keep_best=f"eval_{VALIDATION_METRIC}" if cfg.select_checkpoint ==
                                        "validation" else None)
    save_head(head, out / "student", extra={"teacher": cfg.teacher, "steps": steps, "draft_kind": "eagle"})
    return DistillResult(out / "student", out, out / TRAIN_LOG, resumed_from)


def _validation(cfg: Config, target, tokenizer, head: EagleHead, draft_vocab_ids: list[int] | None):
    """The head's served acceptance on the validation prompts, decoded as the evaluation decodes (cut to the draft
    vocabulary), as eval_* log keys."""
    from .data import render_prompts
    from .sampling import SamplingConfig
    from .validation import served_acceptance

    prompts = render_prompts(tokenizer, cfg.validation_set(tokenizer))

    def validate() -> dict:
        if draft_vocab_ids is not None:
            head.reduce_vocab(draft_vocab_ids)
        try:
            result = served_acceptance(target, head, prompts, gamma=cfg.validation_gamma,
                                       sampling=SamplingConfig(temperature=cfg.temperature, top_p=cfg.top_p),
                                       max_new_tokens=cfg.train_max_new_tokens, eos_token_id=tokenizer.eos_token_id)
        finally:
            head.draft_vocab_ids = None  # training scores the kept rows itself (head_rows)
        return {f"eval_{k}": v for k, v in result.items()}

    return validate


__all__ = ["head_loss", "train_head"]
