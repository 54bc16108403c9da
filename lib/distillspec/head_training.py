"""Training a feature head (eagle.py) on its teacher's text: the EAGLE recipe with this project's divergences.

Data: the teacher's own samples on the training prompts (`train_max_new_tokens` each, the study's sampling), made
once and kept in the run's output directory (`teacher_text.jsonl`, appended batch by batch, so an interrupted run
keeps what it sampled), and the teacher's top hidden states over them (computed once per run, in memory).

Loss per completion position: the divergence of 02 (FKL, RKL, JSD, TVD) between the teacher's next-token
distribution and the head's, plus `head_feature_weight` x smooth-L1 between the head's feature and the teacher's
(EAGLE's regression). The head is trained on blocks as it drafts them (`head_unroll` > 1, EAGLE-3's training-time
test): after the first pass on the teacher's features, each further pass consumes the head's own features of the
pass before, one position later, as in a drafted block. The block's tokens are the teacher's text, which is what a
lossless decoder emits; the head's own tokens are not sampled (a sampled token would need a teacher pass per
position). With a reduced vocabulary (`draft_vocab`) both distributions are taken over the kept ids, the ones the
head scores when decoding.

A plain loop (nanoGPT-style): AdamW, transformers' schedule, a checkpoint every `save_steps` steps or
`save_minutes` minutes (resumed from), train_log.jsonl in the format of a draft's log, the head saved atomically.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .config import Config
from .eagle import EagleHead, save_head, target_features
from .errors import require
from .evaluate import sample_completions
from .losses import chunked_distill_loss
from .sampling import SamplingConfig
from .specdec import left_pad
from .trainlog import TRAIN_LOG, DistillResult, append_log_line

TEACHER_TEXT, CHECKPOINT = "teacher_text.jsonl", "head_checkpoint.pt"


def teacher_text(target, tokenizer, prompts: list[list[int]], *, sampling: SamplingConfig, max_new_tokens: int,
                 batch_size: int, seed: int, path: Path) -> list[dict]:
    """The teacher's completions of `prompts` as rows {prompt, completion} (ids, up to and with EOS), appended to
    `path` one batch at a time; rows already there are kept and not sampled again."""
    done = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    starts = range(len(done), len(prompts), batch_size)  # a batch is appended whole: resume after the last one
    for start in tqdm(starts, desc="teacher text", disable=not starts):
        chunk = prompts[start : start + batch_size]
        (enc, out, new), = sample_completions(target, tokenizer, chunk, sampling=sampling,
                                              max_new_tokens=max_new_tokens, batch_size=len(chunk), seed=seed + start)
        width = enc["input_ids"].shape[1]
        rows = [{"prompt": p, "completion": o[width:][: int(n)]}
                for p, o, n in zip(chunk, out.tolist(), new.sum(1).tolist())]
        with open(path, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        done += rows
    return done[: len(prompts)]


def _left_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ids [B, T] and mask [B, T] (1 = real token), left-padded as the decoder pads its prompts."""
    ids, valid = left_pad(rows, pad, "cpu")
    return ids, valid.long()


@torch.no_grad()
def teacher_features(target, rows: list[dict], *, batch_size: int = 8, pad: int = 0) -> list[torch.Tensor]:
    """Per row, the teacher's post-norm top hidden state at every token of prompt + completion [T, H]."""
    out = []
    for start in tqdm(range(0, len(rows), batch_size), desc="teacher features", leave=False):
        seqs = [r["prompt"] + r["completion"] for r in rows[start : start + batch_size]]
        ids, mask = _left_pad(seqs, pad)
        positions = (mask.cumsum(1) - 1).clamp_min(0)
        _, hidden = target_features(target, ids.to(target.device), mask.to(target.device),
                                    positions.to(target.device), logits_to_keep=-1)
        out += [h[-len(s):].cpu() for h, s in zip(hidden, seqs)]
    return out


def head_batch(rows: list[dict], features: list[torch.Tensor], pad: int = 0) -> dict:
    """A left-padded batch: ids [B, T], mask [B, T] (real tokens), completion [B, T] (completion tokens), f [B, T, H]."""
    seqs = [r["prompt"] + r["completion"] for r in rows]
    ids, mask = _left_pad(seqs, pad)
    comp, _ = _left_pad([[0] * len(r["prompt"]) + [1] * len(r["completion"]) for r in rows], 0)
    f = torch.zeros(*ids.shape, features[0].shape[-1], dtype=features[0].dtype)
    for i, h in enumerate(features):
        f[i, ids.shape[1] - len(h):] = h
    return {"ids": ids, "mask": mask, "completion": comp, "features": f}


def head_loss(head: EagleHead, batch: dict, cfg: Config, head_rows: torch.Tensor) -> dict:
    """The head's loss on one batch (see the module doc): pass d (d = 1..unroll) consumes token t+d beside the
    feature of the pass before at t (the teacher's for d = 1) and is scored against the teacher at t+d."""
    ids, mask, comp = batch["ids"], batch["mask"], batch["completion"]
    teacher = batch["features"].to(head.dtype)  # [B, T, H]
    positions = (mask.cumsum(1) - 1).clamp_min(0)  # the decoder's numbering: real tokens only
    features = teacher[:, :-1]
    totals = {"loss": 0.0, "divergence": 0.0, "feature_loss": 0.0}
    first = None
    for depth in range(1, cfg.head_unroll + 1):
        width = ids.shape[1] - depth  # pairs (token t+depth, feature t) for t = 0 .. T-1-depth
        if width < 1:
            break
        pair_mask = mask[:, depth:] * mask[:, :width]
        out = head(ids[:, depth:], features[:, :width], attention_mask=pair_mask,  # pair t sits at t + depth - 1
                   position_ids=positions[:, depth - 1 : depth - 1 + width], use_cache=False)
        goal = teacher[:, depth:]  # [B, width, H] the teacher's feature at t+depth
        scored = torch.zeros_like(pair_mask)  # the output at t predicts token t+depth+1: a completion token
        scored[:, :-1] = comp[:, depth + 1:] * pair_mask[:, :-1]
        stats = chunked_distill_loss(out.hidden, goal, head_rows, head_rows, scored, divergence=cfg.divergence,
                                     beta=cfg.beta, temperature=cfg.loss_temperature or 1.0,
                                     chunk_size=cfg.chunk_size)
        keep = scored.bool()
        feature_loss = F.smooth_l1_loss(out.hidden[keep].float(), goal[keep].float()) if keep.any() else \
            out.hidden.sum() * 0.0
        term = stats.loss + cfg.head_feature_weight * feature_loss
        totals["loss"] = totals["loss"] + term / cfg.head_unroll
        totals["divergence"] += float(stats.loss.detach()) / cfg.head_unroll
        totals["feature_loss"] += float(feature_loss.detach()) / cfg.head_unroll
        first = stats if first is None else first
        features = out.hidden[:, :-1]  # the next pass drafts one position further on the head's own features
    totals["expected_accept"] = first.expected_accept_sum / max(1, first.n)
    totals["teacher_entropy"] = first.teacher_entropy_sum / max(1, first.n)
    return totals


def _save_checkpoint(path: Path, head, optimizer, scheduler, step: int) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"head": head.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "step": step, "rng": torch.get_rng_state()}, tmp)
    os.replace(tmp, path)


def train_head(cfg: Config, output_dir: str | os.PathLike, *, target, tokenizer, prompts: list[list[int]],
               draft_vocab_ids: list[int] | None = None, resume: bool = True,
               text_path: str | os.PathLike | None = None) -> DistillResult:
    """Train a feature head for `target` on its text for the first `head_text_prompts` of `prompts` (rendered token
    ids); resumable. The head is saved to <output_dir>/student (eagle.save_head) with
    the train log beside it. text_path: where the teacher's text is kept (default <output_dir>/teacher_text.jsonl; a
    study shares one file between its heads): it is sampled with `data_seed`, like the prompt sets."""
    from transformers import get_scheduler

    require(cfg.draft_kind == "eagle", f"train_head trains feature heads; this config's draft_kind is "
            f"'{cfg.draft_kind}' (use distill for a standalone draft).")
    require(len(prompts) > 0, "No training prompts for the feature head: the dataset is empty.")
    from .runtime import world_size

    require(world_size() == 1, "A feature head trains on one process (it is one layer); run it without "
                               "accelerate launch / torchrun.")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    student = out / "student"
    checkpoint, log = out / CHECKPOINT, out / TRAIN_LOG
    text_path = Path(text_path) if text_path is not None else out / TEACHER_TEXT
    if not resume:
        for stale in (checkpoint, log):
            stale.unlink(missing_ok=True)
    sampling = SamplingConfig(temperature=cfg.temperature, top_p=cfg.top_p)
    n_text = cfg.head_text_prompts or cfg.max_steps * cfg.batch_size
    rows = teacher_text(target, tokenizer, prompts[:n_text], sampling=sampling,
                        max_new_tokens=cfg.train_max_new_tokens, batch_size=16, seed=cfg.data_seed, path=text_path)
    rows = [r for r in rows if r["completion"]]
    require(rows, "The teacher wrote nothing for the training prompts: no text to train the head on.")
    features = teacher_features(target, rows, pad=tokenizer.pad_token_id or 0)

    torch.manual_seed(cfg.seed)
    head = EagleHead(target).float().train()
    weight = target.get_output_embeddings().weight.detach().float()
    head_rows = weight if draft_vocab_ids is None else weight[torch.tensor(draft_vocab_ids, device=weight.device)]
    params = [p for p in head.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.warmup_steps,
                              num_training_steps=cfg.max_steps)
    step, resumed_from = 0, None
    if resume and checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=False)
        head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, resumed_from = state["step"], str(checkpoint)
        torch.set_rng_state(state["rng"])
    order = torch.Generator().manual_seed(cfg.seed)
    perms = [torch.randperm(len(rows), generator=order) for _ in range(math.ceil(cfg.max_steps * cfg.batch_size
                                                                                / len(rows)) + 1)]
    sequence = torch.cat(perms).tolist()  # the data order depends only on the seed: a resumed run sees the same
    saved_at = time.monotonic()
    bar = tqdm(total=cfg.max_steps, initial=step, desc="head training")
    pad = tokenizer.pad_token_id or 0
    while step < cfg.max_steps:
        pick = sequence[step * cfg.batch_size : (step + 1) * cfg.batch_size]
        batch = head_batch([rows[i] for i in pick], [features[i] for i in pick], pad)
        batch = {k: v.to(head.device) for k, v in batch.items()}
        stats = head_loss(head, batch, cfg, head_rows)
        optimizer.zero_grad(set_to_none=True)
        stats["loss"].backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
        optimizer.step()
        scheduler.step()
        step += 1
        bar.update(1)
        if step % cfg.logging_steps == 0 or step == cfg.max_steps:
            append_log_line(log, step, {"loss": float(stats["loss"].detach()), "divergence": stats["divergence"],
                                        "feature_loss": stats["feature_loss"],
                                        "expected_accept": stats["expected_accept"],
                                        "teacher_entropy": stats["teacher_entropy"], "grad_norm": grad_norm,
                                        "learning_rate": scheduler.get_last_lr()[0]})
        if step % cfg.save_steps == 0 or time.monotonic() - saved_at > 60 * cfg.save_minutes:
            _save_checkpoint(checkpoint, head, optimizer, scheduler, step)
            saved_at = time.monotonic()
    bar.close()
    save_head(head.eval(), student, extra={"teacher": cfg.teacher, "steps": step, "draft_kind": "eagle"})
    checkpoint.unlink(missing_ok=True)
    return DistillResult(student, out, log, resumed_from)


__all__ = ["head_batch", "head_loss", "teacher_features", "teacher_text", "train_head"]
