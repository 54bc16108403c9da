"""Would a draft tree pay here? Each draft of a study replayed on the target's own greedy text (trees.py): the drafts
a chain of each length and the best tree of each size (at most --nodes nodes, verified in one pass) keep per step,
and the speedup those steps predict at the study's measured step costs (its records, greedy batch 1).

    python benchmarks/draft_trees.py --config configs/offline_gsm8k_kinds.yaml --drafts lookup fkl eagle_fkl

The replay is exact for greedy decoding in fp32 (the decoder's greedy text is the target's, and a step keeps what
spells it), so it needs no timing: it runs in fp32 on the first `speed_prompts` held-out prompts of the run. A step
of a tree costs a verification of nodes + 1 tokens (the records' target_s) and one draft forward per depth (draft_s:
a forward over the few nodes of one depth priced as a one-token forward, a lower bound). Prompt lookup's tree merges
the continuations of every earlier occurrence of the matched suffix (first or most recent first, each cut at a
length); its chain is the decoder's (the first occurrence), or the most recent occurrence's. A hybrid (lookup where
the text matches, its trained draft elsewhere) is replayed with each pair of blocks, copying on every match (the
decoder's) or only where the matched suffix is at least m tokens long.

Each shape is chosen on half of the prompts (even / odd) and its speedup read on the other half, then pooled: the
best chain against the best tree, each chosen the same way, with 95% bootstrap CIs over prompts (paired for the
ratio). Prints a Markdown table; --out writes JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from distillspec.atomic import write_json
from distillspec.data import render_prompts
from distillspec.drafts import kind_of
from distillspec.lookup import Hybrid, PromptLookup
from distillspec.pair import load_target
from distillspec.sampling import SamplingConfig
from distillspec.speed import StepCosts, target_decode
from distillspec.study.preset import StudyConfig
from distillspec.study.rundir import RunPaths, default_run_dir, load_prompt_file
from distillspec.study.stages import decoding_draft
from distillspec.study.stats import bootstrap
from distillspec.trees import (best_tree, chain, depth, head_ranks, hybrid_replay, lookup_replay, model_ranks,
                               replay_steps)


def _costs(records: Path, name: str) -> StepCosts:
    """The step costs the study measured for this draft, greedy at batch 1."""
    speed = json.loads((records / f"{name}_speed.json").read_text())
    row = next(t for t in speed["timed"] if t["setting"] == "greedy, batch 1")
    return StepCosts.from_dict(row["costs"])


def _per_prompt(steps: list[np.ndarray], sizes: list[np.ndarray], depths: list[np.ndarray], costs: StepCosts):
    """(tokens, seconds) per prompt: each step emits its kept drafts and the target's token, and costs its depth in
    draft forwards and a verification of its nodes + 1 tokens."""
    tokens = np.array([(s + 1).sum() for s in steps], float)
    seconds = np.array([sum(costs.draft_s * d + costs.target_s[int(n) + 1] for n, d in zip(size, dep))
                        for size, dep in zip(sizes, depths)])
    return tokens, seconds


def _speedup(tokens, seconds, costs: StepCosts) -> float:
    return float(tokens.sum() / seconds.sum() * costs.target_s[1])


def _shapes_ranked(ranks: list[np.ndarray], fit: list[int], nodes: int, max_depth: int) -> dict:
    """Shape name -> replay function over one prompt: chains of 1..max_depth, trees of 2..nodes chosen on `fit`."""
    shapes = {f"chain {k}": chain(k) for k in range(1, max_depth + 1)}
    shapes.update({f"tree {n}": best_tree([ranks[i] for i in fit], n) for n in range(2, nodes + 1)})

    def play(tree):
        def one(i):
            steps = replay_steps(ranks[i], tree)
            return steps, np.full(len(steps), len(tree)), np.full(len(steps), depth(tree))
        return one
    return {name: (play(tree), sorted(tree)) for name, tree in shapes.items()}


def _shapes_lookup(prompts, outs, lookup: PromptLookup, eos, nodes: int, max_depth: int) -> dict:
    shapes = {}
    for recent in (False, True):
        order, copy = "most recent" if recent else "first", dataclasses.replace(lookup, recent=recent)
        for k in range(1, max_depth + 1):
            shapes[f"chain {k}, {order}"] = dict(lookup=copy, nodes=k, length=k, tree=False)
        for n in range(2, nodes + 1):
            for length in range(1, n + 1):
                shapes[f"tree {n}, {order}, length {length}"] = dict(lookup=copy, nodes=n, length=length, tree=True)

    def play(setting):
        def one(i):
            steps, sizes = lookup_replay(prompts[i], outs[i], eos=eos, **setting)
            return steps, sizes, np.zeros(len(steps))  # no draft forwards
        return one
    return {name: (play(s), s) for name, s in shapes.items()}


def _shapes_hybrid(prompts, outs, hybrid: Hybrid, ranks, eos, max_depth: int) -> dict:
    """A hybrid's blocks (lookup's, the trained draft's; 0: a plain step where nothing matches), with lookup on every
    match (the decoder's), only on matches of at least m tokens, or copying after the most recent occurrence."""
    shapes, recent = {}, dataclasses.replace(hybrid.lookup, recent=True)
    families = [(f"hybrid, match >= {m}" if m > 1 else "hybrid, any match", m, hybrid.lookup)
                for m in range(1, hybrid.lookup.max_ngram + 1)] + [("hybrid, most recent", 1, recent)]
    for family, m, lookup in families:
        for copy in range(2, max_depth + 1):
            for own in range(0, 5):
                shapes[f"{family}, blocks {copy}/{own}"] = dict(copy_block=copy, own_block=own, min_match=m,
                                                                lookup=lookup)

    def play(setting):
        def one(i):
            return hybrid_replay(prompts[i], outs[i], ranks=ranks[i], eos=eos, **setting)
        return one
    return {name: (play(s), s) for name, s in shapes.items()}


def _cross_fit(make_shapes, n_prompts: int, costs: StepCosts, family_of) -> dict:
    """Per family of shapes (family_of(name): e.g. chain, tree): the shape chosen on each half of the prompts, read on
    the other; pooled tokens and seconds per prompt."""
    halves = [list(range(0, n_prompts, 2)), list(range(1, n_prompts, 2))]
    result = {}
    for family in dict.fromkeys(family_of(k) for k in make_shapes(halves[0])):
        tokens, seconds, chosen = np.zeros(n_prompts), np.zeros(n_prompts), []
        for fit, held in (halves, halves[::-1]):
            shapes = {k: v for k, v in make_shapes(fit).items() if family_of(k) == family}

            def score(shape, units):
                t, s = _per_prompt(*zip(*[shape[0](i) for i in units]), costs)
                return _speedup(t, s, costs)
            scores = {k: score(v, fit) for k, v in shapes.items()}
            name = max(scores, key=scores.get)
            tokens[held], seconds[held] = _per_prompt(*zip(*[shapes[name][0](i) for i in held]), costs)
            chosen.append({"shape": name, "detail": str(shapes[name][1]), "fit_speedup": scores[name]})
        result[family] = {"tokens": tokens, "seconds": seconds, "chosen": chosen}
    return result


def _family(shape: str) -> str:
    """chain / tree, and for prompt lookup which occurrence leads ('chain, first' is the decoder's lookup); a
    hybrid's: which matches it copies on ('hybrid, any match' is the decoder's)."""
    return shape.split(",")[0].split()[0] + ("" if "," not in shape else ", " + shape.split(", ")[1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--run-dir", default=None, help="default: runs/<config name>")
    ap.add_argument("--records", default=None, help="the step costs' records (default: the run's records/)")
    ap.add_argument("--drafts", nargs="+", default=["lookup"], help="runs of the study: lookup, models, heads")
    ap.add_argument("--nodes", type=int, default=8, help="most nodes of a tree (besides the root)")
    ap.add_argument("--max-depth", type=int, default=8)
    ap.add_argument("--n-prompts", type=int, default=None, help="default: the study's speed_prompts")
    ap.add_argument("--texts", default=None, help="a JSON file keeping the target's greedy texts between runs")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    cfg = StudyConfig.from_yaml(args.config).replace(eval_precision="fp32")
    paths = RunPaths(Path(args.run_dir) if args.run_dir else default_run_dir(cfg))
    records = Path(args.records) if args.records else paths.records
    target, tok = load_target(cfg.for_decoding())
    prompts = render_prompts(tok, load_prompt_file(paths.eval_prompts))[: args.n_prompts or cfg.speed_prompts]
    cached = Path(args.texts) if args.texts else None
    if cached is not None and cached.is_file() and json.loads(cached.read_text())["prompts"] == prompts:
        outs = json.loads(cached.read_text())["outputs"]
    else:
        outs = [target_decode(target, tok, [p], sampling=SamplingConfig(greedy=True),
                              max_new_tokens=cfg.max_new_tokens)[1][0] for p in tqdm(prompts, desc="target's text")]
        if cached is not None:
            write_json({"prompts": prompts, "outputs": outs}, cached)
    eos = {int(tok.eos_token_id)}
    report, lines = {"config": args.config, "prompts": len(prompts), "nodes": args.nodes, "drafts": {}}, []
    for name in args.drafts:
        costs = _costs(records, name)
        draft = decoding_draft(cfg, paths.root, target, tok, name)
        if isinstance(draft, PromptLookup):
            def make(fit, draft=draft):
                return _shapes_lookup(prompts, outs, draft, eos, args.nodes, args.max_depth)
        else:
            model = draft.draft if isinstance(draft, Hybrid) else draft
            reads = getattr(model, "reads_target_features", False)
            ranks = [head_ranks(model, target, p, o, args.max_depth) if reads else model_ranks(model, p, o,
                                                                                               args.max_depth)
                     for p, o in tqdm(list(zip(prompts, outs)), desc=f"{name}: ranks")]

            def make(fit, ranks=ranks, draft=draft):
                if isinstance(draft, Hybrid):
                    return _shapes_hybrid(prompts, outs, draft, ranks, eos, args.max_depth)
                return _shapes_ranked(ranks, fit, args.nodes, args.max_depth)
        fams = _cross_fit(make, len(prompts), costs, _family)
        first = next(iter(fams.values()))  # the decoder's own: the chain (prompt lookup's: first occurrence)
        row = {"kind": kind_of(draft).name, "c": costs.c, "families": {}}
        for family, f in fams.items():
            speed = bootstrap(lambda i, f=f: f["tokens"][i].sum(-1) / f["seconds"][i].sum(-1) * costs.target_s[1],
                              len(prompts))
            against = bootstrap(lambda i, f=f: (f["tokens"][i].sum(-1) / f["seconds"][i].sum(-1))
                                / (first["tokens"][i].sum(-1) / first["seconds"][i].sum(-1)), len(prompts))
            row["families"][family] = {**f, "speedup": speed, "over_first": against}
            lines.append(f"| {name} | {family} | {'; '.join(x['shape'] for x in f['chosen'])} | "
                         f"{_fmt(speed)} | {_fmt(against)} |")
        report["drafts"][name] = row
    print(f"\n{len(prompts)} held-out prompts, greedy, batch 1, trees of at most {args.nodes} nodes; predicted "
          "speedup over target-only decoding [95% CI over prompts], each shape chosen on the other half of the prompts")
    print("\n| draft | shapes | chosen (on each half) | predicted speedup | against the first row |")
    print("|---|---|---|---|---|")
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1, default=_plain))


def _fmt(ci: tuple[float, float, float]) -> str:
    value, lo, hi = ci
    return f"{value:.2f}x [{lo:.2f}, {hi:.2f}]"


def _plain(x):
    return x.tolist() if isinstance(x, np.ndarray) else x.item() if isinstance(x, np.generic) else str(x)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
