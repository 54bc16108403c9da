"""What one SD step costs on this machine, and what acceptance a draft needs to be faster than the target alone.

    python benchmarks/cost_model.py --context 150 --reps 20 --batch-sizes 1 16

Measures, with the KV cache holding `--context` tokens per row (fp32, eval mode, median of `--reps` forwards):
- the target's forward with t = 1..8 new tokens per row (a verification feeds gamma + 1);
- a draft derived from the teacher's first k layers: its body (embeddings + k layers + norm) for one new token, and
  its LM head alone with the full vocabulary or only the first N rows (a reduced draft vocabulary);
then predicts the speedup over target-only decoding for acceptance rates alpha and draft lengths gamma with this
measured verify cost, instead of Leviathan et al.'s assumption that verifying gamma + 1 tokens costs one step:

    speedup = (1 - alpha^(gamma+1)) / (1 - alpha) * T_target(1) / (gamma * T_draft(1) + T_target(gamma + 1))

and prints, per draft shape, the alpha at which the best gamma breaks even (1.0x) and reaches 1.3x.
"""

from __future__ import annotations

import argparse
import json

import torch
from tqdm.auto import tqdm

from distillspec.models import draft_from_teacher, load_model
from distillspec.speed import StepCosts, median_seconds, forward_seconds


@torch.inference_mode()
def head_cost(model, batch: int, rows: int, reps: int) -> float:
    """Median seconds of the LM head for one token per row, scoring only its first `rows` vocabulary rows."""
    weight = model.get_output_embeddings().weight[:rows].contiguous()
    hidden = torch.randn(batch, 1, weight.shape[1], dtype=weight.dtype)
    return median_seconds(lambda: torch.nn.functional.linear(hidden, weight), reps)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="smollm2-135m-instruct")
    ap.add_argument("--context", type=int, default=150)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--layers", type=int, nargs="+", default=[10, 6, 4, 2])
    ap.add_argument("--vocab-rows", type=int, nargs="+", default=[8192, 4096, 2048])
    ap.add_argument("--max-new", type=int, default=8, help="verification sizes 1..max-new tokens per row")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="weights and compute of both models")
    ap.add_argument("--no-mkldnn", action="store_true", help="turn oneDNN off (torch.backends.mkldnn.enabled)")
    ap.add_argument("--out", default=None, help="also write the measurements as JSON here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.no_mkldnn:
        torch.backends.mkldnn.enabled = False
    teacher, _ = load_model(args.teacher, dtype=torch.bfloat16 if args.dtype == "bf16" else torch.float32)
    teacher.eval()
    vocab = teacher.config.vocab_size
    report = {"threads": torch.get_num_threads(), "context": args.context, "reps": args.reps, "dtype": args.dtype,
              "mkldnn": torch.backends.mkldnn.enabled, "batches": {}}
    for batch in args.batch_sizes:
        t_verify = {t: forward_seconds(teacher, batch_size=batch, context=args.context, new_tokens=t, reps=args.reps)
                    for t in tqdm(range(1, args.max_new + 1), desc=f"target forwards, batch {batch}")}
        heads = {rows: head_cost(teacher, batch, rows, args.reps) for rows in [vocab, *args.vocab_rows]}
        drafts = {}
        for k in tqdm(args.layers, desc=f"draft bodies, batch {batch}"):
            draft = draft_from_teacher(teacher, k).eval()
            drafts[k] = forward_seconds(draft, batch_size=batch, context=args.context, new_tokens=1, reps=args.reps,
                                        body_only=True)
            del draft
        report["batches"][batch] = {"target_forward_s": t_verify, "head_s": heads, "draft_body_s": drafts}
        print(f"\n## batch {batch}, {args.context}-token context, {torch.get_num_threads()} threads, {args.dtype}, "
              f"oneDNN {'on' if torch.backends.mkldnn.enabled else 'off'}\n")
        print("target forward, ms by new tokens per row: " + ", ".join(
            f"{t}: {1e3 * s:.1f}" for t, s in t_verify.items()))
        print("verify(gamma+1) / decode(1): " + ", ".join(
            f"g{g}: {t_verify[g + 1] / t_verify[1]:.2f}" for g in range(1, args.max_new)))
        print("LM head, ms: " + ", ".join(f"{rows} rows: {1e3 * s:.2f}" for rows, s in heads.items()))
        print("\n| draft | c = draft / target step | alpha for 1.0x (gamma) | alpha for 1.3x (gamma) |")
        print("|---|---|---|---|")
        for k, body in drafts.items():
            for rows in [vocab, *args.vocab_rows]:
                costs = StepCosts(t_verify, body + heads[rows], batch, args.context)
                even, g_even = costs.needed_alpha(1.0)
                goal, g_goal = costs.needed_alpha(1.3)
                print(f"| {k} layers, {rows} vocab rows | {costs.c:.3f} | {even:.2f} ({g_even}) | "
                      f"{goal:.2f} ({g_goal}) |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
