"""What a reduced draft vocabulary saves inside the decoder: the cost ratio c of derived drafts with the full head
and with their head cut to the N most frequent ids of the teacher's own answers.

    python benchmarks/reduced_vocab.py --layers 10 4 --vocab 4096 1024

Kept ids (distillspec.draft_vocab): the N most frequent token ids of the teacher's answers to --n-train GSM8K
training prompts (T=0.6, top_p 0.95), plus EOS and the special tokens; fewer when the teacher wrote fewer. Then batched greedy SD (gamma --gamma) of the teacher with
each draft on --n-prompts GSM8K test prompts; prints c (mean draft decode forward / target verify forward, as the
decoder measures it), alpha_tok and tokens/s. The drafts are undistilled: their acceptance says nothing about what a
distilled reduced draft reaches.
"""

import argparse
from distillspec.data import load_prompts, render_prompts
from distillspec.draft_vocab import choose_draft_vocab, teacher_token_counts
from distillspec.models import draft_from_teacher, load_model, reduce_draft_vocab
from distillspec.sampling import SamplingConfig
from distillspec.specdec import speculative_generate


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="smollm2-135m-instruct")
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--layers", type=int, nargs="+", default=[10, 4])
    ap.add_argument("--vocab", type=int, nargs="+", default=[4096, 1024, 256])
    ap.add_argument("--n-train", type=int, default=64)
    ap.add_argument("--n-prompts", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--gamma", type=int, default=4)
    args = ap.parse_args()
    teacher, tok = load_model(args.teacher)
    train = render_prompts(tok, load_prompts("gsm8k", "train", args.n_train, source=args.data, seed=1, tokenizer=tok))
    counts = teacher_token_counts(teacher, tok, train, sampling=SamplingConfig(temperature=0.6, top_p=0.95),
                                  max_new_tokens=128)
    test = render_prompts(tok, load_prompts("gsm8k", "test", args.n_prompts, source=args.data, seed=123,
                                            tokenizer=tok))
    print(f"{len(counts)} distinct ids in the teacher's answers to {args.n_train} training prompts\n")
    print("| draft layers | head rows | c | alpha_tok | tokens/s |\n|---|---|---|---|---|")
    for k in args.layers:
        for n in [None, *args.vocab]:
            draft = draft_from_teacher(teacher, k)
            if n:
                draft = reduce_draft_vocab(draft, choose_draft_vocab(counts, tok, n), tok.eos_token_id)
            kw = dict(gamma=args.gamma, max_new_tokens=args.max_new_tokens, eos_token_id=tok.eos_token_id, timed=True)
            speculative_generate(teacher, draft, test[:2], **kw)  # warm-up
            m = speculative_generate(teacher, draft, test, **kw).metrics
            print(f"| {k} | {draft.get_output_embeddings().weight.shape[0]} | {m.cost_ratio_c:.3f} | "
                  f"{m.alpha_tok:.3f} | {m.tokens_per_s:.2f} |")


if __name__ == "__main__":
    main()
