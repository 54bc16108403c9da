"""Distil a draft for a fixed wall-clock budget and measure held-out expected acceptance before and after (#4).

    DISTILLSPEC_DATA_DIR=../shared/data python benchmarks/distill_budget.py --name rkl --minutes 30 \
        --set divergence=rkl max_steps=1000

(Outside `make`, offline, DISTILLSPEC_DATA_DIR must point at the local data; the Makefile sets it.)

Default config: configs/offline_gsm8k_full.yaml (the full study's recipe; its max_steps also caps the run).

Trains with the config's settings (plus --set overrides) until the budget runs out or max_steps is reached,
then scores the undistilled and the distilled draft on the same held-out prompts (the config's eval split,
first --n-eval prompts) at the task temperature / top_p, two ways:
- on the draft's own samples (the goal's metric: teacher-scored mean sum min(p, q) at T=1);
- on the teacher's samples (what speculative decoding actually sees; a draft that collapses onto text the
  teacher finds easy can score well on its own samples and badly here).
Writes <out>/<name>/budget_result.json and prints one Markdown table row.
"""

import argparse
import json
import time
from pathlib import Path

import yaml
from transformers import TrainerCallback

from distillspec.atomic import write_json
from distillspec.study.preset import StudyConfig
from distillspec.data import load_prompts, render_prompts
from distillspec.distillation import distill
from distillspec.drafts import load_pair
from distillspec.trainlog import read_log
from distillspec.evaluate import expected_acceptance
from distillspec.models import load_model


class WallClockBudget(TrainerCallback):
    """Stop (and save) once the training wall time exceeds the budget."""

    def __init__(self, seconds: float):
        self.seconds, self.start = seconds, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if time.perf_counter() - self.start > self.seconds:
            control.should_training_stop = True
            control.should_save = True


def score(teacher, draft, tok, prompts, cfg, args) -> dict:
    out = {}
    for sampler in ("draft", "target"):
        rep = expected_acceptance(teacher, draft, tok, prompts, max_new_tokens=args.eval_tokens,
                                  temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed,
                                  batch_size=cfg.eval_batch_size, progress=False, sampler=sampler)
        out[sampler] = rep.as_dict()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/offline_gsm8k_full.yaml")
    ap.add_argument("--name", required=True)
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--set", nargs="*", default=[], help="config overrides key=value (YAML values)")
    ap.add_argument("--n-eval", type=int, default=64)
    ap.add_argument("--eval-tokens", type=int, default=128)
    ap.add_argument("--out", default="runs/distill_budget")
    args = ap.parse_args()
    overrides = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    cfg = StudyConfig.from_yaml(args.config, **overrides)
    out = Path(args.out) / args.name
    teacher, student, tok = load_pair(cfg, training=True)
    prompts = render_prompts(tok, load_prompts(cfg.task, cfg.eval_split, args.n_eval, source=cfg.data_source,
                                               seed=cfg.data_seed, tokenizer=tok))
    # the undistilled draft's scores are shared by runs with the same draft and evaluation settings
    settings = {k: getattr(cfg, k) for k in ("teacher", "student", "student_keep_layers", "student_layer_strategy",
                                             "task", "eval_split", "data_seed", "temperature", "top_p", "seed")}
    settings.update(n_eval=args.n_eval, eval_tokens=args.eval_tokens)
    before_path = Path(args.out) / "baseline.json"
    cached = json.loads(before_path.read_text()) if before_path.is_file() else {}
    if cached.get("settings") == settings:
        before = cached["scores"]
    else:
        before = score(teacher, student, tok, prompts, cfg, args)
        write_json({"settings": settings, "scores": before}, before_path)
    start = time.perf_counter()
    result = distill(cfg.run_config(), out, resume=False, pair=(teacher, student, tok),
                     callbacks=[WallClockBudget(args.minutes * 60)])
    train_s = time.perf_counter() - start
    log = read_log(result.log_path)
    draft = load_model(result.student_dir)[0]
    after = score(teacher, draft, tok, prompts, cfg, args)
    steps = int(log["step"].max())
    record = {"name": args.name, "overrides": overrides, "minutes_budget": args.minutes, "train_s": train_s,
              "steps": steps, "n_eval": args.n_eval, "eval_tokens": args.eval_tokens, "before": before,
              "after": after, "config": cfg.to_dict()}
    write_json(record, out / "budget_result.json")
    d0, d1 = before["draft"]["expected_accept"], after["draft"]["expected_accept"]
    t0, t1 = before["target"]["expected_accept"], after["target"]["expected_accept"]
    print("| run | steps | train min | own samples before -> after | teacher samples before -> after | "
          "draft entropy after |")
    print(f"| {args.name} | {steps} | {train_s / 60:.1f} | {d0:.3f} -> {d1:.3f} ({100 * (d1 - d0):+.1f} pt) | "
          f"{t0:.3f} -> {t1:.3f} ({100 * (t1 - t0):+.1f} pt) | {after['draft']['draft_entropy']:.3f} |")


if __name__ == "__main__":
    main()
