"""Starting acceptance of drafts derived from the teacher, by which layers are kept (README table).

    python benchmarks/draft_layers.py --n-prompts 8 --max-new-tokens 64

Runs batched SD (gamma 5, GSM8K sampling T=0.6, top_p=0.95) of the teacher with each derived draft on the same
held-out GSM8K test prompts and prints a Markdown table of alpha_tok, alpha_pos and the mean expected
acceptance sum(min(p, q)) at the sampled positions.
"""

import argparse

from distillspec.data import load_prompts, render_prompts
from distillspec.models import choose_layers, draft_from_teacher, load_model
from distillspec.sampling import SamplingConfig
from distillspec.specdec import speculative_generate


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", default="smollm2-135m-instruct")
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--n-prompts", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--layers", type=int, nargs="+", default=[4, 6, 10, 15])
    args = ap.parse_args()
    teacher, tok = load_model(args.teacher)
    prompts = render_prompts(tok, load_prompts("gsm8k", "test", args.n_prompts, source=args.data, seed=123))
    n = teacher.config.num_hidden_layers
    print("| kept layers | strategy | indices | alpha_tok | alpha_pos | mean 1-TV (T=0.6, p=0.95) | mean 1-TV (T=1) |")
    print("|---|---|---|---|---|---|---|")
    for k in args.layers:
        for strategy in ("first", "even"):
            draft = draft_from_teacher(teacher, k, strategy)
            res = speculative_generate(teacher, draft, prompts, gamma=5, max_new_tokens=args.max_new_tokens,
                                       sampling=SamplingConfig(temperature=0.6, top_p=0.95),
                                       eos_token_id=tok.eos_token_id, seed=0)
            t = res.tokens_df()
            idx = choose_layers(n, k, strategy)
            shown = idx if len(idx) <= 6 else f"{idx[:3]}...{idx[-2:]}"
            print(f"| {k}/{n} | {strategy} | {shown} | {res.metrics.alpha_tok:.3f} | {res.metrics.alpha_pos:.3f} | "
                  f"{t['expected_accept'].mean():.3f} | {t['expected_accept_t1'].mean():.3f} |", flush=True)


if __name__ == "__main__":
    main()
