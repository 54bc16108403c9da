"""The teacher's own text, for what trains off-policy (feature heads, warm starts): its completions of training
prompts, sampled once and kept, and its top hidden states over them.

The completions are appended to a jsonl file one batch at a time, so an interrupted run keeps what it sampled and
a run that asks for more prompts extends the file; the sampling seed of each batch is `seed` + its first index, so
the same prompts give the same text whatever else was asked before."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .eagle import target_states
from .forward import position_ids
from .errors import require
from .evaluate import sample_completions
from .sampling import SamplingConfig
from .specdec import left_pad


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


@dataclass
class TeacherText:
    """What a loop trains on: the teacher's non-empty answers {prompt, completion}, their features [T, H] each, and
    the pad id their batches use."""

    rows: list[dict]
    features: list[torch.Tensor]
    pad: int

    def batch(self, pick: list[int]) -> dict:
        """text_batch of these rows."""
        return text_batch([self.rows[i] for i in pick], [self.features[i] for i in pick], self.pad)


def text_with_features(target, tokenizer, prompts: list[list[int]], *, temperature: float, top_p: float,
                       max_new_tokens: int, seed: int, path: Path, layers: tuple[int, ...] = ()) -> TeacherText:
    """The teacher's text for `prompts` (teacher_text, kept at path, 16 prompts a batch), its empty answers left out,
    with the teacher's features over it (teacher_features, with `layers`); refused when the teacher wrote nothing."""
    rows = teacher_text(target, tokenizer, prompts, sampling=SamplingConfig(temperature=temperature, top_p=top_p),
                        max_new_tokens=max_new_tokens, batch_size=16, seed=seed, path=Path(path))
    rows = [r for r in rows if r["completion"]]
    require(rows, "The teacher wrote nothing for the training prompts: there is no text to train on.")
    pad = tokenizer.pad_token_id or 0
    return TeacherText(rows, teacher_features(target, rows, pad=pad, layers=layers), pad)


def padded(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ids [B, T] and mask [B, T] (1 = real token), left-padded as the decoder pads its prompts."""
    ids, valid = left_pad(rows, pad, "cpu")
    return ids, valid.long()


@torch.no_grad()
def teacher_features(target, rows: list[dict], *, batch_size: int = 8, pad: int = 0,
                     layers: tuple[int, ...] = ()) -> list[torch.Tensor]:
    """Per row, the teacher's post-norm top hidden state at every token of prompt + completion [T, H]; with `layers`
    (a fused head's), the inputs of those layers before it [T, 3H + H]: what the head reads, then what it predicts."""
    out = []
    for start in tqdm(range(0, len(rows), batch_size), desc="teacher features", leave=False):
        seqs = [r["prompt"] + r["completion"] for r in rows[start : start + batch_size]]
        ids, mask = padded(seqs, pad)
        mask = mask.to(target.device)
        top, read = target_states(target, ids.to(target.device), mask, position_ids(mask), layers=layers)
        hidden = torch.cat([read, top], -1) if layers else top
        out += [h[-len(s):].cpu() for h, s in zip(hidden, seqs)]
    return out


def text_batch(rows: list[dict], features: list[torch.Tensor], pad: int = 0) -> dict:
    """A left-padded batch: ids [B, T], mask [B, T] (real tokens), completion [B, T] (completion tokens), f [B, T, H]
    (the teacher's features, zero on padding)."""
    seqs = [r["prompt"] + r["completion"] for r in rows]
    ids, mask = padded(seqs, pad)
    comp, _ = padded([[0] * len(r["prompt"]) + [1] * len(r["completion"]) for r in rows], 0)
    f = torch.zeros(*ids.shape, features[0].shape[-1], dtype=features[0].dtype)
    for i, h in enumerate(features):
        f[i, ids.shape[1] - len(h):] = h
    return {"ids": ids, "mask": mask, "completion": comp, "features": f}


__all__ = ["TeacherText", "padded", "teacher_features", "teacher_text", "text_batch", "text_with_features"]
