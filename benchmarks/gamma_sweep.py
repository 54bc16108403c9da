"""Measured SD speedup over target-only decoding for each draft length, next to the cost model's prediction.

    python benchmarks/gamma_sweep.py --config configs/offline_gsm8k_fast.yaml --draft fkl --gammas 1 2 3 4 5 6 8

The draft is a trained draft of a study run (runs/<preset>/drafts/<name>/student, or `baseline`), with its head
cut to the run's reduced vocabulary when the preset sets draft_vocab (data/draft_vocab.json). For each
gamma: SD and target-only `generate` timed on the same --n-prompts held-out prompts (distillspec.speed.time_decoding,
greedy unless --sampled, batch --batch-size), and the cost model (step costs measured once on this machine) at the
acceptance that run reached: its forwards timed with the batch's left padding, as decoding runs them, and (the
`all-ones mask` column) without, which on a CPU takes another attention path (benchmarks/mask_path_costs.py).
Also prints c and the acceptance needed for 1.0x and 1.3x. --eval-precision and
--no-mkldnn change how both models run (target-only and SD alike).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from distillspec.study.preset import StudyConfig
from distillspec.data import render_prompts
from distillspec.pair import load_target
from distillspec.sampling import SamplingConfig
from distillspec.speed import decoding_shape, measure_step_costs, time_decoding
from distillspec.study.rundir import RunPaths, default_run_dir, load_prompt_file
from distillspec.study.stages import decoding_draft


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--run-dir", default=None, help="default: runs/<config name>")
    ap.add_argument("--draft", default="fkl", help="a training run's name, or 'baseline'")
    ap.add_argument("--gammas", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6, 8])
    ap.add_argument("--n-prompts", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--sampled", action="store_true", help="sample at the preset's temperature / top_p (else greedy)")
    ap.add_argument("--full-head", action="store_true", help="keep the draft's full head even if the preset cuts it")
    ap.add_argument("--no-mkldnn", action="store_true")
    ap.add_argument("--eval-precision", choices=["fp32", "bf16"], default=None,
                    help="dtype of both models (default: the preset's eval_precision, else its precision)")
    ap.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = ap.parse_args()
    if args.no_mkldnn:
        torch.backends.mkldnn.enabled = False
    cfg = StudyConfig.from_yaml(args.config)
    if args.eval_precision is not None:
        cfg = cfg.replace(eval_precision=args.eval_precision)
    paths = RunPaths(Path(args.run_dir) if args.run_dir else default_run_dir(cfg))
    target, tok = load_target(cfg.for_decoding())
    draft = decoding_draft(cfg, paths.root, target, tok, args.draft, full_head=args.full_head)
    prompts = render_prompts(tok, load_prompt_file(paths.eval_prompts))[: args.n_prompts]
    sampling = (SamplingConfig(temperature=cfg.temperature, top_p=cfg.top_p) if args.sampled
                else SamplingConfig(greedy=True))
    context, left_pad = decoding_shape(prompts, args.batch_size, cfg.max_new_tokens)
    costs = measure_step_costs(target, draft, batch_size=args.batch_size, context=context, max_gamma=max(args.gammas),
                               left_pad=left_pad)
    ones = measure_step_costs(target, draft, batch_size=args.batch_size, context=context, max_gamma=max(args.gammas))
    print(f"c = {costs.c:.3f}; verify / step by gamma: "
          + ", ".join(f"{g}: {costs.verify_ratio(g):.2f}" for g in range(1, costs.max_gamma + 1)))
    for goal in (1.0, 1.3):
        alpha, gamma = costs.needed_alpha(goal)
        print(f"alpha needed for {goal}x: {alpha:.2f} (gamma {gamma})")
    print("\n| gamma | alpha_pos | predicted | predicted, all-ones mask | measured | target tok/s | SD tok/s | "
          "same text |\n|---|---|---|---|---|---|---|---|")
    rows = []
    for gamma in args.gammas:
        t = time_decoding(target, draft, tok, prompts, gamma=gamma, sampling=sampling, batch_size=args.batch_size,
                          max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, progress=f"gamma {gamma}")
        alpha = t["accepted"].sum() / t["verified"].sum()
        target_tps, sd_tps = t["target_tokens"].sum() / t["target_s"].sum(), t["sd_tokens"].sum() / t["sd_s"].sum()
        row = {"gamma": gamma, "alpha_pos": float(alpha), "predicted": costs.speedup(alpha, gamma),
               "predicted_all_ones_mask": ones.speedup(alpha, gamma), "measured": sd_tps / target_tps,
               "target_tokens_per_s": target_tps, "sd_tokens_per_s": sd_tps,
               "identical": None if args.sampled else float(t["identical"].mean())}
        rows.append(row)
        same = "n/a" if row["identical"] is None else f"{100 * row['identical']:.0f}%"
        print(f"| {gamma} | {alpha:.3f} | {row['predicted']:.2f}x | {row['predicted_all_ones_mask']:.2f}x | "
              f"{row['measured']:.2f}x | {target_tps:.1f} | {sd_tps:.1f} | {same} |", flush=True)
    if args.out:
        out = {"costs": costs.as_dict(), "costs_all_ones_mask": ones.as_dict(), "rows": rows}
        Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
