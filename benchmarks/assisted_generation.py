"""This decoder against transformers' assisted generation on the same work: the same target, draft, prompts and
gamma at batch 1, greedy, each prompt decoded by both in turn (which goes first alternates), in fp32 and bf16.

    python benchmarks/assisted_generation.py                   # draft = the target itself (all drafts accepted)
    python benchmarks/assisted_generation.py --draft DIR       # a saved draft or feature head (heads: ours only)

Prints one JSON object: tokens/s of each per dtype, their ratio with a 95% bootstrap CI over prompts, and whether
the two wrote the same text. transformers' assisted generation is batch 1 only and needs a standalone draft model.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from distillspec.data import load_prompts, render_prompts
from distillspec.drafts import kind_of
from distillspec.evaluate import count_new_tokens
from distillspec.models import load_model
from distillspec.drafts import load_draft
from distillspec.study.preset import pair_config
from distillspec.specdec import speculative_generate
from distillspec.study.stats import bootstrap


def assisted(target, draft, tok, prompt, gamma, max_new):
    ids = torch.tensor([prompt])
    start = time.perf_counter()
    out = target.generate(ids, attention_mask=torch.ones_like(ids), assistant_model=draft, do_sample=False,
                          num_assistant_tokens=gamma, num_assistant_tokens_schedule="constant",
                          assistant_confidence_threshold=0.0, max_new_tokens=max_new,
                          pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    seconds = time.perf_counter() - start
    new = out[0, ids.shape[1]:].tolist()
    return seconds, new[: count_new_tokens(out[:, ids.shape[1]:], tok.eos_token_id)]


def ours(target, draft, tok, prompt, gamma, max_new):
    res = speculative_generate(target, draft, [prompt], gamma=gamma, max_new_tokens=max_new, sampling="greedy",
                               eos_token_id=tok.eos_token_id, record=False)
    return res.metrics.wall_s, res.sequences[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draft", default=None, help="a saved draft directory (default: the target itself)")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--gamma", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    args = parser.parse_args()
    cfg = pair_config()
    report = {"gamma": args.gamma, "prompts": args.prompts, "max_new_tokens": args.max_new_tokens,
              "draft": args.draft or "the target itself", "threads": torch.get_num_threads()}
    for dtype in args.dtypes.split(","):
        target, tok = load_model(cfg.teacher, dtype=getattr(torch, dtype))
        draft = target if args.draft is None else load_draft(cfg, target, tok, args.draft).to(target.dtype)
        prompts = render_prompts(tok, load_prompts("gsm8k", "test", args.prompts, tokenizer=tok))
        runners = {"ours": ours} if not kind_of(draft).standalone else {"assisted": assisted, "ours": ours}
        for run in runners.values():  # warm-up
            run(target, draft, tok, prompts[0], args.gamma, 8)
        seconds = {k: [] for k in runners}
        tokens = {k: [] for k in runners}
        same = []
        for i, prompt in enumerate(prompts):
            order = list(runners) if i % 2 == 0 else list(reversed(runners))
            outs = {}
            for key in order:
                s, out = runners[key](target, draft, tok, prompt, args.gamma, args.max_new_tokens)
                seconds[key].append(s)
                tokens[key].append(len(out))
                outs[key] = out
            same.append(len(set(map(tuple, outs.values()))) == 1)
        row = {k: sum(tokens[k]) / sum(seconds[k]) for k in runners}
        if "assisted" in runners:
            t, s = {k: np.array(v, float) for k, v in tokens.items()}, {k: np.array(v) for k, v in seconds.items()}
            ratio, lo, hi = bootstrap(lambda i: (t["ours"][i].sum(-1) / s["ours"][i].sum(-1))
                                      / (t["assisted"][i].sum(-1) / s["assisted"][i].sum(-1)), len(prompts))
            row.update(ours_over_assisted=ratio, ci=[lo, hi], same_text=float(np.mean(same)))
        report[dtype] = row
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
