"""Draft trees, timed: the decoder with a draft's chain against the same draft's tree (draft_tree.py), each prompt
decoded by the target alone and by every method in turn (the order rotates), batch 1, greedy, on a finished study's
drafts as its evaluation decodes them (heads and drafts cut to the study's vocabulary).

    python benchmarks/tree_decoding.py --config configs/offline_cnndm_kinds.yaml --prompts 24 \\
        --methods fkl:gamma=2 "fkl:tree=0|1" eagle_fkl:gamma=1 "eagle_fkl:tree=0|1" lookup:gamma=7 lookup:gamma=6:nodes=8

A method is a run of the study and its shape, ':'-separated: gamma=K (a chain of K drafts; a hybrid's cap for
both sides), tree=P|P|... (a static tree of rank paths, '.' between depths: 0|1|0.0 is the draft's first two
choices, then its first choice after the first), nodes=N (prompt lookup's tree: every occurrence's continuation of
gamma tokens merged into N nodes; in a hybrid, its lookup side), blocks=L/D (a hybrid's two blocks), recent (lookup
copies after the most recent occurrence). Prints one JSON object: tokens/s, speedup over the target alone [95% CI
over prompts], each method against the first method of the same run (paired), alpha_pos, the nodes and the tokens
per step, the share of prompts whose text equals the target's, each prompt's tokens and seconds (for other
pairings), and the other processes' share of the CPU while timing (above runtime.BUSY_SHARE the times are not the
decoder's alone).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from distillspec.threads import set_threads

set_threads("timing")  # before torch loads: OpenMP reads its waiting policy once

import numpy as np  # noqa: E402
import torch  # noqa: E402

from distillspec.atomic import write_json  # noqa: E402
from distillspec.data import render_prompts  # noqa: E402
from distillspec.draft_tree import parse_tree  # noqa: E402
from distillspec.errors import require  # noqa: E402
from distillspec.lookup import Hybrid, PromptLookup  # noqa: E402
from distillspec.pair import load_target  # noqa: E402
from distillspec.runtime import BUSY_SHARE, OtherLoad  # noqa: E402
from distillspec.sampling import GREEDY  # noqa: E402
from distillspec.specdec import speculative_generate  # noqa: E402
from distillspec.speed import target_decode  # noqa: E402
from distillspec.study.preset import StudyConfig  # noqa: E402
from distillspec.study.rundir import RunPaths, default_run_dir, load_prompt_file  # noqa: E402
from distillspec.study.stages import decoding_draft  # noqa: E402
from distillspec.study.stats import bootstrap  # noqa: E402


def parse_method(spec: str) -> tuple[str, dict]:
    """'run:key=value:flag' -> (run, settings)."""
    name, *parts = spec.split(":")
    settings = {}
    for part in parts:
        key, _, value = part.partition("=")
        require(key in ("gamma", "tree", "nodes", "blocks", "recent"), f"Method {spec!r}: unknown setting {key!r} "
                "(use gamma=K, tree=P|P, nodes=N, blocks=L/D, recent).")
        if key == "tree":
            settings[key] = parse_tree(value)
        elif key == "blocks":
            settings[key] = tuple(int(b) for b in value.split("/"))
        elif key == "recent":
            settings[key] = True
        else:
            settings[key] = int(value)
    return name, settings


def shaped(draft, settings: dict):
    """The run's draft with a method's lookup settings (tree nodes, occurrence) and a hybrid's blocks."""
    def lookup(found: PromptLookup) -> PromptLookup:
        return dataclasses.replace(found, tree_nodes=settings.get("nodes", 0),
                                   recent=settings.get("recent", found.recent))
    if isinstance(draft, PromptLookup):
        return lookup(draft)
    if isinstance(draft, Hybrid):
        draft = dataclasses.replace(draft, lookup=lookup(draft.lookup))
        return draft.with_blocks(*settings["blocks"]) if "blocks" in settings else draft
    require("nodes" not in settings and "recent" not in settings and "blocks" not in settings,
            "nodes, recent and blocks are prompt lookup's and a hybrid's settings.")
    return draft


def _target(target, tok, prompt, max_new):
    seconds, (out,) = target_decode(target, tok, [prompt], sampling=GREEDY, max_new_tokens=max_new)
    return seconds, out, {}


def _decoder(target, draft, tok, prompt, max_new, settings):
    res = speculative_generate(target, draft, [prompt], gamma=settings.get("gamma", 1), max_new_tokens=max_new,
                               sampling="greedy", eos_token_id=tok.eos_token_id, draft_tree=settings.get("tree"))
    m, steps = res.metrics, res.records.step_arrays()
    return m.wall_s, res.sequences[0], {"verified": m.verified, "accepted": m.accepted, "steps": m.target_calls,
                                         "nodes": float(steps["proposed"].sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--run-dir", default=None, help="default: runs/<config name>")
    ap.add_argument("--methods", nargs="+", required=True)
    ap.add_argument("--prompts", type=int, default=None, help="default: the study's speed_prompts")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()
    cfg = StudyConfig.from_yaml(args.config)
    paths = RunPaths(Path(args.run_dir) if args.run_dir else default_run_dir(cfg))
    target, tok = load_target(cfg.for_decoding())
    prompts = render_prompts(tok, load_prompt_file(paths.eval_prompts))[: args.prompts or cfg.speed_prompts]
    drafts, runners = {}, {"target": lambda p: _target(target, tok, p, cfg.max_new_tokens)}
    for spec in args.methods:
        name, settings = parse_method(spec)
        if name not in drafts:
            drafts[name] = decoding_draft(cfg, paths.root, target, tok, name)
        draft = shaped(drafts[name], settings)
        runners[spec] = (lambda p, d=draft, s=settings: _decoder(target, d, tok, p, cfg.max_new_tokens, s))
    for run in runners.values():  # warm-up
        run(prompts[0][:64])
    seconds, tokens, counts = ({k: [] for k in runners} for _ in range(3))
    same = {k: [] for k in runners}
    with OtherLoad() as load:
        for i, prompt in enumerate(prompts):
            keys = list(runners)
            outs = {}
            for key in keys[i % len(keys):] + keys[: i % len(keys)]:
                s, out, c = runners[key](prompt)
                seconds[key].append(s)
                tokens[key].append(len(out))
                counts[key].append(c)
                outs[key] = out
            for key in runners:
                same[key].append(outs[key] == outs["target"])
    t, s = {k: np.array(v, float) for k, v in tokens.items()}, {k: np.array(v) for k, v in seconds.items()}

    def ratio(a, b):
        return bootstrap(lambda i: (t[a][i].sum(-1) / s[a][i].sum(-1)) / (t[b][i].sum(-1) / s[b][i].sum(-1)),
                         len(prompts))

    first = {}
    for spec in args.methods:
        first.setdefault(spec.split(":")[0], spec)
    report = {"config": args.config, "prompts": len(prompts), "max_new_tokens": cfg.max_new_tokens,
              "precision": cfg.eval_precision, "threads": torch.get_num_threads(),
              "other_load": load.share, "busy": load.share is not None and load.share > BUSY_SHARE, "methods": {}}
    for spec in args.methods:
        c = {f: sum(x[f] for x in counts[spec]) for f in ("verified", "accepted", "steps", "nodes")}
        report["methods"][spec] = {
            "tokens_per_s": float(t[spec].sum() / s[spec].sum()), "speedup": ratio(spec, "target"),
            "against_first": ratio(spec, first[spec.split(":")[0]]),
            "alpha_pos": c["accepted"] / max(c["verified"], 1), "nodes_per_step": c["nodes"] / max(c["steps"], 1),
            "tokens_per_step": float(t[spec].sum() / max(c["steps"], 1)),
            "same_text_as_target": float(np.mean(same[spec])),
            "per_prompt": {"tokens": t[spec].tolist(), "seconds": s[spec].tolist()}}  # for other pairings
    report["target_per_prompt"] = {"tokens": t["target"].tolist(), "seconds": s["target"].tolist()}
    print(json.dumps(report, indent=1))
    if args.out:
        write_json(report, args.out)


if __name__ == "__main__":
    main()
