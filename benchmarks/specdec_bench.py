"""Throughput of batched SD vs target-only generate vs transformers assisted generation; prints one JSON object.

    python benchmarks/specdec_bench.py                       # offline pair, GSM8K test prompts, as in the README
    python benchmarks/specdec_bench.py --draft runs/x/draft  # a saved (e.g. distilled) draft instead

Every configuration decodes the same prompts (in chunks of the batch size), so tokens/s are comparable.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from distillspec.metrics import expected_tokens_per_step
from distillspec.data import load_prompts, render_prompts
from distillspec.evaluate import count_new_tokens
from distillspec.speed import target_tokens_per_s
from distillspec.drafts import load_pair
from distillspec.study.preset import pair_config
from distillspec.sampling import SamplingConfig
from distillspec.specdec import speculative_generate

SAMPLINGS = {"greedy": SamplingConfig(greedy=True), "T0.6_p0.95": SamplingConfig(temperature=0.6, top_p=0.95)}


def bench_assisted(target, draft, tok, prompts, max_new, sampling, gamma):
    tokens, start = 0, time.perf_counter()
    for p in prompts:
        ids = torch.tensor([p])
        out = target.generate(ids, attention_mask=torch.ones_like(ids), assistant_model=draft,
                              num_assistant_tokens=gamma, num_assistant_tokens_schedule="constant",
                              max_new_tokens=max_new, pad_token_id=tok.pad_token_id,
                              eos_token_id=tok.eos_token_id, **sampling.generate_kwargs())
        tokens += count_new_tokens(out[:, ids.shape[1]:], tok.eos_token_id)
    return tokens / (time.perf_counter() - start)


def bench_sd(target, draft, tok, prompts, batch, max_new, sampling, gamma):
    """SD over the prompts in chunks; tau = emitted tokens / row verification steps, summed over chunks."""
    tokens, wall, forward, accepted, proposed, verified, calls = 0, 0.0, 0.0, 0, 0, 0, 0
    for i in range(0, len(prompts), batch):
        m = speculative_generate(target, draft, prompts[i : i + batch], gamma=gamma, max_new_tokens=max_new,
                                 sampling=sampling, eos_token_id=tok.eos_token_id, record=False, seed=i,
                                 timed=True).metrics  # per-forward times: c and the overhead
        tokens, wall, forward = tokens + m.new_tokens, wall + m.wall_s, forward + m.forward_s
        accepted, proposed, verified, calls = (accepted + m.accepted, proposed + m.proposed,
                                               verified + m.verified, calls + m.target_calls)
    alpha_pos = accepted / verified
    return {
        "tokens_per_s": tokens / wall,
        "alpha_tok": accepted / proposed,
        "alpha_pos": alpha_pos,
        "tau": tokens / calls,
        "predicted_tau": expected_tokens_per_step(alpha_pos, gamma),
        "cost_ratio_c": m.cost_ratio_c,
        "overhead": wall / forward,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help="a preset: its teacher and baseline draft (default: the flags)")
    ap.add_argument("--teacher", default=None, help="default: smollm2-135m-instruct")
    ap.add_argument("--draft", default=None, help="saved draft dir; default: the baseline draft (the config's "
                                                  "student, or derived from the teacher)")
    ap.add_argument("--keep-layers", type=int, default=None, help="layers of the derived draft (first k; default 10)")
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--n-prompts", type=int, default=16)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--gamma", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--samplings", nargs="+", default=list(SAMPLINGS), choices=list(SAMPLINGS))
    ap.add_argument("--skip-assisted", action="store_true")
    args = ap.parse_args()

    torch.manual_seed(0)
    target, draft, tok = load_pair(pair_config(args.config, teacher=args.teacher, keep_layers=args.keep_layers),
                                   args.draft)
    prompts = render_prompts(tok, load_prompts("gsm8k", "test", args.n_prompts, source=args.data, seed=0))
    result = {
        "config": {**vars(args), "draft_layers": draft.config.num_hidden_layers, "torch": torch.__version__,
                   "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine()},
        "runs": [],
    }
    for name in args.samplings:
        sampling = SAMPLINGS[name]
        for batch in args.batch_sizes:
            target_tps = target_tokens_per_s(target, tok, prompts, batch_size=batch,
                                             max_new_tokens=args.max_new_tokens, sampling=sampling)
            sd = bench_sd(target, draft, tok, prompts, batch, args.max_new_tokens, sampling, args.gamma)
            sd_tps = sd.pop("tokens_per_s")
            result["runs"].append({"sampling": name, "batch": batch, "target_tokens_per_s": target_tps,
                                   "sd_tokens_per_s": sd_tps, "speedup": sd_tps / target_tps, **sd})
        if not args.skip_assisted:
            tps = bench_assisted(target, draft, tok, prompts, args.max_new_tokens, sampling, args.gamma)
            result["runs"].append({"sampling": name, "batch": 1, "assisted_tokens_per_s": tps})
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
