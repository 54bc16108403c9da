"""The plain training loop (nanoGPT-style) for what trains on a fixed set of examples rather than on its own
rollouts: feature heads (head_training.py) and warm starts (warm_start.py).

AdamW over the trainable parameters, transformers' learning-rate schedule, gradient clipping; a checkpoint every
`save_steps` steps or `save_minutes` minutes, resumed from (model, optimiser, schedule, step, RNG; the data order is
fixed by the seed, so a resumed run sees the examples an uninterrupted one would); train_log.jsonl in a draft's
format, with an optional evaluation logged at step 0, every `eval_every` steps and at the end; with `keep_best`,
the weights of the evaluation where that value was highest are kept (best.pt beside the checkpoint) and loaded at
the end, and the log's last line names their step."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .atomic import atomic_write
from .config import Optimisation
from .trainlog import TRAIN_LOG, append_log_line, selection_line
from .training_settings import CHECKPOINT

BEST = "best.pt"  # the best evaluated weights so far (keep_best), beside the checkpoint; removed at the end


def _save(path: Path, model, optimizer, scheduler, step: int) -> None:
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "step": step, "rng": torch.get_rng_state()}
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def example_order(n: int, settings: Optimisation) -> list[int]:
    """Which examples each step takes: passes over the n examples, each in its own seeded order."""
    order = torch.Generator().manual_seed(settings.seed)
    passes = math.ceil(settings.max_steps * settings.batch_size / n) + 1
    return torch.cat([torch.randperm(n, generator=order) for _ in range(passes)]).tolist()


def train_offline(model: torch.nn.Module, n_examples: int, step_loss: Callable[[list[int]], dict],
                  settings: Optimisation, out_dir: str | os.PathLike, *, resume: bool = True, desc: str = "training",
                  evaluate: Callable[[], dict] | None = None, eval_every: int | None = None,
                  keep_best: str | None = None) -> tuple[int, str | None]:
    """Train `model` for settings.max_steps steps; step_loss(indices) returns {'loss': a differentiable scalar, and
    floats to log} for a batch of example indices. Returns (steps done, the checkpoint resumed from or None). The
    checkpoint is removed at the end (the caller saves the trained model). keep_best: a key of evaluate()'s result;
    the model ends with the weights of the evaluation where it was highest."""
    from transformers import get_scheduler

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint, log, best_path = out / CHECKPOINT, out / TRAIN_LOG, out / BEST
    if not resume:
        for stale in (checkpoint, log, best_path):
            stale.unlink(missing_ok=True)
    best = torch.load(best_path, weights_only=False) if keep_best and best_path.is_file() else None
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    scheduler = get_scheduler(settings.lr_scheduler, optimizer, num_warmup_steps=settings.warmup_steps,
                              num_training_steps=settings.max_steps)
    step, resumed_from = 0, None
    if resume and checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, resumed_from = state["step"], str(checkpoint)
        torch.set_rng_state(state["rng"])
    sequence = example_order(n_examples, settings)

    def evaluation() -> dict:
        nonlocal best
        if evaluate is None:
            return {}
        rng = torch.get_rng_state()  # the evaluation samples; training's own draws stay as they were
        model.eval()
        result = evaluate()
        model.train()
        torch.set_rng_state(rng)
        if keep_best and (best is None or result[keep_best] > best["value"]):
            best = {"step": step, "value": float(result[keep_best]),
                    "model": {k: v.detach().clone() for k, v in model.state_dict().items()}}
            atomic_write(best_path, lambda tmp: torch.save(best, tmp))
        return result

    if step == 0 and evaluate is not None:
        append_log_line(log, 0, evaluation())
    saved_at = time.monotonic()
    bar = tqdm(total=settings.max_steps, initial=step, desc=desc)
    model.train()
    while step < settings.max_steps:
        stats = step_loss(sequence[step * settings.batch_size : (step + 1) * settings.batch_size])
        optimizer.zero_grad(set_to_none=True)
        stats["loss"].backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm))
        optimizer.step()
        scheduler.step()
        step += 1
        bar.update(1)
        line = {}  # one line per logged step (a log keeps one entry per step): the step's stats, its evaluation
        if step % settings.logging_steps == 0 or step == settings.max_steps:
            line = {**{k: float(torch.as_tensor(v).detach()) for k, v in stats.items()}, "grad_norm": grad_norm,
                    "learning_rate": scheduler.get_last_lr()[0]}
        if evaluate is not None and (eval_every and step % eval_every == 0 or step == settings.max_steps):
            line.update(evaluation())
        if line:
            append_log_line(log, step, line)
        if step % settings.save_steps == 0 or time.monotonic() - saved_at > 60 * settings.save_minutes:
            _save(checkpoint, model, optimizer, scheduler, step)
            saved_at = time.monotonic()
    bar.close()
    model.eval()
    if best is not None:
        model.load_state_dict(best["model"])
        append_log_line(log, step, selection_line(best["step"], best["value"]))
    checkpoint.unlink(missing_ok=True)
    best_path.unlink(missing_ok=True)
    return step, resumed_from


__all__ = ["CHECKPOINT", "Optimisation", "example_order", "train_offline"]
