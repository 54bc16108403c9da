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
import statistics
import time

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache

from distillspec.models import draft_from_teacher, load_model


def _median_s(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.inference_mode()
def forward_cost(model, batch: int, context: int, new: int, reps: int, body_only: bool = False) -> float:
    """Median seconds of one forward feeding `new` tokens per row after a cached context of `context` tokens."""
    ids = torch.randint(100, 1000, (batch, context + new))
    cache = DynamicCache(config=model.config)
    model(input_ids=ids[:, :context], past_key_values=cache, use_cache=True, logits_to_keep=1)
    mask = torch.ones(batch, context + new, dtype=torch.long)
    positions = torch.arange(context, context + new)[None].expand(batch, -1)
    net = model.model if body_only else model

    def step():
        net(input_ids=ids[:, context:], attention_mask=mask, position_ids=positions, past_key_values=cache,
            use_cache=True)
        cache.crop(-new)  # back to the context: every repetition sees the same cache

    return _median_s(step, reps)


@torch.inference_mode()
def head_cost(model, batch: int, rows: int, reps: int) -> float:
    """Median seconds of the LM head for one token per row, scoring only its first `rows` vocabulary rows."""
    weight = model.get_output_embeddings().weight[:rows].contiguous()
    hidden = torch.randn(batch, 1, weight.shape[1])
    return _median_s(lambda: torch.nn.functional.linear(hidden, weight), reps)


def speedup(alpha: float, gamma: int, t_draft: float, t_verify: dict[int, float]) -> float:
    tokens = gamma + 1 if alpha >= 1 else (1 - alpha ** (gamma + 1)) / (1 - alpha)
    return tokens * t_verify[1] / (gamma * t_draft + t_verify[gamma + 1])


def needed_alpha(target_speedup: float, t_draft: float, t_verify: dict[int, float], gammas) -> tuple[float, int]:
    """Smallest alpha (0.01 grid) at which some gamma reaches target_speedup, with that gamma."""
    for a in range(1, 100):
        alpha = a / 100
        best = max(gammas, key=lambda g: speedup(alpha, g, t_draft, t_verify))
        if speedup(alpha, best, t_draft, t_verify) >= target_speedup:
            return alpha, best
    return float("nan"), 0


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
    ap.add_argument("--out", default=None, help="also write the measurements as JSON here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    teacher, _ = load_model(args.teacher)
    teacher.eval()
    vocab = teacher.config.vocab_size
    gammas = range(1, args.max_new)
    report = {"threads": torch.get_num_threads(), "context": args.context, "reps": args.reps, "batches": {}}
    for batch in args.batch_sizes:
        t_verify = {t: forward_cost(teacher, batch, args.context, t, args.reps)
                    for t in tqdm(range(1, args.max_new + 1), desc=f"target forwards, batch {batch}")}
        heads = {rows: head_cost(teacher, batch, rows, args.reps) for rows in [vocab, *args.vocab_rows]}
        drafts = {}
        for k in tqdm(args.layers, desc=f"draft bodies, batch {batch}"):
            draft = draft_from_teacher(teacher, k).eval()
            drafts[k] = forward_cost(draft, batch, args.context, 1, args.reps, body_only=True)
            del draft
        report["batches"][batch] = {"target_forward_s": t_verify, "head_s": heads, "draft_body_s": drafts}
        print(f"\n## batch {batch}, {args.context}-token context, {torch.get_num_threads()} threads\n")
        print("target forward, ms by new tokens per row: " + ", ".join(
            f"{t}: {1e3 * s:.1f}" for t, s in t_verify.items()))
        print(f"verify(gamma+1) / decode(1): " + ", ".join(
            f"g{g}: {t_verify[g + 1] / t_verify[1]:.2f}" for g in gammas))
        print("LM head, ms: " + ", ".join(f"{rows} rows: {1e3 * s:.2f}" for rows, s in heads.items()))
        print("\n| draft | c = draft / target step | alpha for 1.0x (gamma) | alpha for 1.3x (gamma) |")
        print("|---|---|---|---|")
        for k, body in drafts.items():
            for rows in [vocab, *args.vocab_rows]:
                t_draft = body + heads[rows]
                even, g_even = needed_alpha(1.0, t_draft, t_verify, gammas)
                goal, g_goal = needed_alpha(1.3, t_draft, t_verify, gammas)
                print(f"| {k} layers, {rows} vocab rows | {t_draft / t_verify[1]:.3f} | {even:.2f} ({g_even}) | "
                      f"{goal:.2f} ({g_goal}) |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
