"""This decoder's prompt-lookup draft against transformers' prompt lookup on the same work: the target alone
(`generate`), transformers (`generate(prompt_lookup_num_tokens=k, max_matching_ngram_size=n)`) and the decoder with
PromptLookup(n) at gamma k, and the decoder at the block the measured cost model chooses (from a pilot on 4 training
prompts: the acceptance per depth and the match lengths on offer, speed.BlockAcceptance), each prompt decoded by all
of them in turn (the order rotates), batch 1, greedy.

    python benchmarks/prompt_lookup.py --task cnndm --block 10 --ngram 3 --dtype float32
    python benchmarks/prompt_lookup.py --task gsm8k --block 3 --ngram 2 --draft DIR   # and the hybrid with DIR
    python benchmarks/prompt_lookup.py --task gsm8k --block 7 --ngram 2 --recent --skip transformers,decoder_cost_model

With --recent, the decoder's lookup also runs copying after the most recent occurrence of the longest match
(`PromptLookup(n, recent=True)`, the `lookup_recent` key) at the same block, paired with the default (the earliest);
with a draft too, the hybrid copying after the most recent occurrence at the hybrid's blocks (hybrid_recent).

With --draft, the hybrid's two blocks (lookup's and the trained draft's, 0..--block each) are chosen by the cost model
from a pilot of the hybrid on the same 4 training prompts (acceptance per depth of each source, the share of steps
that had a match).

Prints one JSON object: tokens/s of each, speedups over the target alone and the decoder over transformers with 95%
bootstrap CIs over prompts, the decoder's share of drafted steps and alpha_pos, the cost model's chosen block and its
predicted speedups against the measured ones, and whether every method wrote the target's own greedy text
(token-identical in fp32; bf16 near-ties can differ).
"""

from __future__ import annotations

import argparse
import json
import time

from distillspec.threads import set_threads

set_threads("timing")  # before torch loads: OpenMP reads its waiting policy once

import numpy as np  # noqa: E402
import torch  # noqa: E402

from distillspec.data import load_prompts, render_prompts  # noqa: E402
from distillspec.drafts import load_draft  # noqa: E402
from distillspec.evaluate import count_new_tokens  # noqa: E402
from distillspec.lookup import SOURCES, Hybrid, PromptLookup  # noqa: E402
from distillspec.models import load_model  # noqa: E402
from distillspec.specdec import speculative_generate  # noqa: E402
from distillspec.speed import BlockAcceptance, SourceAcceptance, decoding_shape, measure_step_costs  # noqa: E402
from distillspec.study.evaluation import decoding_draft  # noqa: E402
from distillspec.study.preset import pair_config  # noqa: E402
from distillspec.study.stats import bootstrap  # noqa: E402


def _generate(target, tok, prompt, max_new, **extra):
    ids = torch.tensor([prompt])
    start = time.perf_counter()
    out = target.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new,
                          pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, **extra)
    seconds = time.perf_counter() - start
    new = out[0, ids.shape[1]:]
    return seconds, new[: count_new_tokens(new[None], tok.eos_token_id)].tolist(), {}


def _decoder(target, draft, tok, prompt, max_new, gamma):
    res = speculative_generate(target, draft, [prompt], gamma=gamma, max_new_tokens=max_new, sampling="greedy",
                               eos_token_id=tok.eos_token_id, record=False)
    m, steps = res.metrics, res.records.step_arrays()
    return m.wall_s, res.sequences[0], {"verified": m.verified, "accepted": m.accepted,
                                         "drafted": m.drafted_share * m.target_calls, "steps": m.target_calls,
                                         "proposed_per_step": steps["proposed"], "accepted_per_step": steps["accepted"],
                                         "source_per_step": steps.get("source")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="cnndm", choices=["gsm8k", "cnndm"])
    parser.add_argument("--config", default=None, help="a preset whose teacher and data source to use")
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--block", type=int, default=10, help="prompt_lookup_num_tokens and the decoder's gamma")
    parser.add_argument("--ngram", type=int, default=3, help="max_matching_ngram_size and PromptLookup(max_ngram)")
    parser.add_argument("--draft", default=None, help="a saved draft or head: also time the hybrid with it")
    parser.add_argument("--run", default=None, help="or a study's run directory (with --config and --run-draft): "
                        "its draft as the evaluation decodes it (head cut to the study's vocabulary)")
    parser.add_argument("--run-draft", default="fkl", help="the draft of --run")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--skip", default="", help="methods not to time, e.g. transformers,decoder_cost_model")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--recent", action="store_true", help="also time lookup copying after the most recent "
                        "occurrence (decoder_recent, at --block) and, with a draft, its hybrid (hybrid_recent)")
    args = parser.parse_args()
    cfg = pair_config(args.config)
    target, tok = load_model(cfg.teacher, dtype=getattr(torch, args.dtype))
    prompts = render_prompts(tok, load_prompts(args.task, "test", args.prompts, source=cfg.data_source,
                                               tokenizer=tok, max_article_tokens=cfg.max_article_tokens))
    lookup = PromptLookup(args.ngram)
    training_split = "validation" if args.task == "cnndm" else "train"  # as the presets train (CNN/DM: no train split)
    pilot_prompts = render_prompts(tok, load_prompts(args.task, training_split, 4, source=cfg.data_source,
                                                     tokenizer=tok, max_article_tokens=cfg.max_article_tokens))
    pilot = [_decoder(target, lookup, tok, p, args.max_new_tokens, args.block)[2] for p in pilot_prompts]
    acceptance = BlockAcceptance.from_steps(np.concatenate([c["proposed_per_step"] for c in pilot]),
                                            np.concatenate([c["accepted_per_step"] for c in pilot]))
    context, _ = decoding_shape(prompts, 1, args.max_new_tokens)
    costs = measure_step_costs(target, lookup, batch_size=1, context=context, max_gamma=args.block)
    best = costs.best_gamma(acceptance)
    runners = {
        "target": lambda p: _generate(target, tok, p, args.max_new_tokens),
        "transformers": lambda p: _generate(target, tok, p, args.max_new_tokens,
                                            prompt_lookup_num_tokens=args.block,
                                            max_matching_ngram_size=args.ngram),
        "decoder": lambda p: _decoder(target, lookup, tok, p, args.max_new_tokens, args.block),
    }
    if args.recent:
        recent = PromptLookup(args.ngram, recent=True)
        runners["decoder_recent"] = lambda p: _decoder(target, recent, tok, p, args.max_new_tokens, args.block)
    if best not in (0, args.block):
        runners["decoder_cost_model"] = lambda p: _decoder(target, lookup, tok, p, args.max_new_tokens, best)
    hybrid_model = None
    if args.draft is not None or args.run is not None:
        draft = (load_draft(cfg.for_decoding(), target, tok, args.draft) if args.run is None
                 else decoding_draft(cfg, args.run, target, tok, args.run_draft)).to(target.dtype)
        pilot = [_decoder(target, Hybrid(draft, lookup), tok, p, args.max_new_tokens, args.block)[2]
                 for p in pilot_prompts]
        source = np.concatenate([c["source_per_step"] for c in pilot])
        proposed, accepted = (np.concatenate([c[k] for c in pilot]) for k in ("proposed_per_step", "accepted_per_step"))
        copies = source == SOURCES["lookup"]
        sources = SourceAcceptance.from_steps(proposed, accepted, copies)
        by_source = [sources.lookup, sources.draft]
        hybrid_costs = measure_step_costs(target, Hybrid(draft, lookup), batch_size=1, context=context,
                                          max_gamma=args.block)
        blocks = hybrid_costs.best_hybrid_blocks(*by_source, float(copies.mean()))
        hybrid = Hybrid(draft, lookup, *blocks)
        hybrid_model = {"blocks (lookup, draft)": blocks, "pilot_lookup_share": float(copies.mean()),
                        "pilot_lookup_accept_per_depth": by_source[0].accept,
                        "pilot_draft_accept_per_depth": by_source[1].accept, "c": hybrid_costs.c,
                        "predicted_speedup": hybrid_costs.hybrid_speedup(*by_source, float(copies.mean()), *blocks)}
        runners["hybrid"] = lambda p: _decoder(target, hybrid, tok, p, args.max_new_tokens, max(max(blocks), 1))
        if args.recent:
            hybrid_recent = Hybrid(draft, recent, *blocks)
            runners["hybrid_recent"] = lambda p: _decoder(target, hybrid_recent, tok, p, args.max_new_tokens,
                                                          max(max(blocks), 1))
    runners = {k: v for k, v in runners.items() if k not in args.skip.split(",")}
    for run in runners.values():  # warm-up
        run(prompts[0][:64])
    seconds, tokens, counts = {k: [] for k in runners}, {k: [] for k in runners}, {k: [] for k in runners}
    same = []
    for i, prompt in enumerate(prompts):
        keys = list(runners)
        order = keys[i % len(keys):] + keys[: i % len(keys)]
        outs = {}
        for key in order:
            s, out, c = runners[key](prompt)
            seconds[key].append(s)
            tokens[key].append(len(out))
            counts[key].append(c)
            outs[key] = out
        same.append(all(o == outs["target"] for o in outs.values()))
    t, s = {k: np.array(v, float) for k, v in tokens.items()}, {k: np.array(v) for k, v in seconds.items()}

    def ratio(a, b):
        return bootstrap(lambda i: (t[a][i].sum(-1) / s[a][i].sum(-1)) / (t[b][i].sum(-1) / s[b][i].sum(-1)),
                         len(prompts))

    report = {"task": args.task, "prompts": len(prompts), "block": args.block, "ngram": args.ngram,
              "dtype": args.dtype, "max_new_tokens": args.max_new_tokens, "threads": torch.get_num_threads(),
              "tokens_per_s": {k: float(t[k].sum() / s[k].sum()) for k in runners},
              "speedup_over_target": {k: ratio(k, "target") for k in runners if k != "target"},
              "decoder_over_transformers": ratio("decoder", "transformers") if "transformers" in runners else None,
              "recent_over_earliest": {f"{k}_recent": ratio(f"{k}_recent", k) for k in ("decoder", "hybrid")
                                       if {k, f"{k}_recent"} <= runners.keys()},
              "cost_model": {"chosen_block": best, "pilot_accept_per_depth": acceptance.accept,
                             "pilot_offered": acceptance.offered,
                             "predicted_speedup": {"decoder": costs.speedup(acceptance, args.block),
                                                   "decoder_cost_model": costs.speedup(acceptance, best)},
                             "verify_steps": {k: costs.verify_ratio(k) for k in range(1, args.block + 1)}},
              "same_text_as_target": float(np.mean(same))}
    for key in ("decoder", "decoder_recent", "decoder_cost_model", "hybrid", "hybrid_recent"):
        if key in runners:
            c = {f: sum(x[f] for x in counts[key]) for f in ("verified", "accepted", "drafted", "steps")}
            report[f"{key}_alpha_pos"] = c["accepted"] / max(c["verified"], 1)
            report[f"{key}_drafted_share"] = c["drafted"] / max(c["steps"], 1)
    if hybrid_model is not None:
        report["hybrid_cost_model"] = hybrid_model
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
