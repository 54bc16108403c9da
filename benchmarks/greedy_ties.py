"""Where greedy SD and the target's own greedy `generate` part ways in low precision, and why.

    python benchmarks/greedy_ties.py --config configs/offline_gsm8k_fast.yaml --draft fkl --n-prompts 8

In fp32 greedy SD writes exactly the target's text (tests/test_specdec.py). In bf16 the target's logits depend on
how many tokens one forward feeds (a verification feeds gamma + 1, `generate` one), so where the target's two best
tokens are nearly tied the argmax can flip, and the texts part ways from there. For every prompt whose texts
differ this prints the first differing position, the target's top-2 logit gap there (recomputed in fp32 from the
shared prefix), and whether the two texts' tokens there are its two best: a near-tie, not a decoding error, when
the gap is within bf16's rounding of the logits (about 2^-8 of their size).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from distillspec.study.preset import StudyConfig
from distillspec.data import render_prompts
from distillspec.evaluate import sample_completions
from distillspec.pair import load_target
from distillspec.sampling import SamplingConfig
from distillspec.specdec import speculative_generate
from distillspec.study.rundir import RunPaths, default_run_dir, load_prompt_file
from distillspec.study.stages import decoding_draft


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--run-dir", default=None)
    ap.add_argument("--draft", default="fkl")
    ap.add_argument("--gamma", type=int, default=2)
    ap.add_argument("--n-prompts", type=int, default=8)
    args = ap.parse_args()
    cfg = StudyConfig.from_yaml(args.config)
    paths = RunPaths(Path(args.run_dir) if args.run_dir else default_run_dir(cfg))
    target, tok = load_target(cfg.for_decoding())
    draft = decoding_draft(cfg, paths.root, target, tok, args.draft)
    exact = load_target(cfg.replace(precision="fp32"))[0]
    prompts = render_prompts(tok, load_prompt_file(paths.eval_prompts))[: args.n_prompts]
    print(f"target and draft in {target.dtype}, gamma {args.gamma}, {cfg.max_new_tokens} new tokens\n")
    print("| prompt | same text | first difference at | top-2 gap (fp32 logits) | both tokens are the fp32 top 2 |")
    print("|---|---|---|---|---|")
    for i, prompt in enumerate(prompts):
        (_, out, new), = sample_completions(target, tok, [prompt], sampling=SamplingConfig(greedy=True),
                                            max_new_tokens=cfg.max_new_tokens, batch_size=1)
        reference = out[0, len(prompt):][: int(new.sum())].tolist()
        sd = speculative_generate(target, draft, [prompt], gamma=args.gamma, max_new_tokens=cfg.max_new_tokens,
                                  eos_token_id=tok.eos_token_id, record=False).sequences[0]
        if sd == reference:
            print(f"| {i} | yes | | | |")
            continue
        at = next(k for k in range(min(len(sd), len(reference))) if sd[k] != reference[k])
        with torch.inference_mode():
            logits = exact(torch.tensor([prompt + reference[:at]])).logits[0, -1].float()
        top = torch.topk(logits, 2)
        runner_up = {int(top.indices[0]), int(top.indices[1])} == {sd[at], reference[at]}
        print(f"| {i} | no | {at} | {float(top.values[0] - top.values[1]):.4f} | {'yes' if runner_up else 'no'} |")


if __name__ == "__main__":
    main()
