"""Does the cost model time the forward that decoding runs? One forward of a run's target and draft at a batch size,
feeding k new tokens per row after a KV cache with the held-out prompts' lengths, with an all-ones mask (how
`speed.measure_step_costs` times it) and with the prompts' own left padding (how `generate` and SD run a ragged
batch).

    python benchmarks/mask_path_costs.py --run runs/offline_cnndm_seeds --draft fkl_s0 --batch-size 16

On a CPU the two can differ by far more than the padding's share of the work: transformers drops an all-ones mask
for a one-token query, and torch's attention then takes a different kernel.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from distillspec.study.preset import StudyConfig
from distillspec.data import render_prompts
from distillspec.pair import load_target
from distillspec.speed import forward_steps, median_seconds_each
from distillspec.study import stages
from distillspec.study.rundir import RunPaths, load_prompt_file


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="a finished run directory (its config, prompts, drafts)")
    ap.add_argument("--draft", required=True, help="a draft of that run, e.g. fkl_s0")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--reps", type=int, default=8)
    args = ap.parse_args()
    cfg = StudyConfig.from_yaml(args.run / "config.yaml")
    target, tok = load_target(cfg.for_decoding())
    prompts = render_prompts(tok, load_prompt_file(RunPaths(args.run).eval_prompts))[: args.batch_size]
    draft = stages.decoding_draft(cfg, args.run, target, tok, args.draft)
    lengths = [len(p) for p in prompts]
    print(f"batch {len(prompts)}, prompt tokens {min(lengths)}-{max(lengths)}; median ms of one forward:")
    print("| model | mask | " + " | ".join(f"{k} new" for k in args.new_tokens) + " |")
    print("|---|---|" + "---|" * len(args.new_tokens))
    for who, model in (("target", target), ("draft", draft)):
        for padded in (False, True):
            pad = [max(lengths) - n for n in lengths] if padded else None
            with torch.inference_mode():
                costs = median_seconds_each(forward_steps(model, batch_size=len(prompts), context=max(lengths),
                                                          new_tokens=args.new_tokens, left_pad=pad), args.reps)
            cells = " | ".join(f"{1000 * costs[k]:.1f}" for k in args.new_tokens)
            print(f"| {who} | {'left-padded' if padded else 'all ones'} | {cells} |")


if __name__ == "__main__":
    main()
