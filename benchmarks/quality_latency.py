"""The quality-latency study (DistillSpec's lossy trade-off): for each draft and acceptance setting, the decoded text's
quality on held-out prompts (one decode per setting, sampled at the task's temperature) and the speedup at batch 1.

    python benchmarks/quality_latency.py --config configs/offline_gsm8k_fast.yaml --run runs/offline_gsm8k_fast \\
        --drafts baseline,fkl --prompts 64 --timed 12 --out runs/quality_latency_gsm8k

Settings (quality.SWEEP): lossless; DistillSpec's lenient rejection sampling 'lin:eps' and 'exp:eps'; greedy
lenience 'greedy:l' (accept when the target's T=1 probability of the drafted token is at least l times its top one).
Quality: ROUGE-1/2/L against the CNN/DM highlights or GSM8K exact match of the final number, the target's NLL per
output token and the share of output tokens outside its top-p 0.95 nucleus, each with a 95% bootstrap CI over
prompts; the target's own `generate` is the reference row. Speed: time_decoding at batch 1 on the first --timed
prompts (SD and target-only `generate` interleaved), the speedup with its CI over prompts.

Writes under --out: settings.json (what the rows are made with: a rerun with other settings is refused), rows.jsonl
(one row per finished setting, rewritten atomically after each: a rerun skips what is done; at the end in the
table's order, so that quality_table(rows) rebuilds results.md),
<draft>_<setting>_judged.parquet and _timing.parquet, results.md (the table) and quality_latency.png.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from distillspec.threads import set_threads

set_threads("timing")  # before torch loads: OpenMP reads its waiting policy once

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from distillspec.atomic import write_parquet, write_text  # noqa: E402
from distillspec.data import load_prompts, render_prompts, task_spec  # noqa: E402
from distillspec.drafts import load_draft  # noqa: E402
from distillspec.errors import DistillSpecError, require  # noqa: E402
from distillspec.models import load_model  # noqa: E402
from distillspec.quality import SWEEP, acceptance_rule, judge  # noqa: E402
from distillspec.sampling import SamplingConfig  # noqa: E402
from distillspec.specdec import speculative_generate  # noqa: E402
from distillspec.speed import target_decode, time_decoding  # noqa: E402
from distillspec.study.evaluation import decoding_draft  # noqa: E402
from distillspec.study.preset import pair_config  # noqa: E402
from distillspec.study.quality_latency import (plot_quality_latency, quality_summary, quality_table,  # noqa: E402
                                               speedup_summary)


def _outputs_of_generate(target, tok, prompts, sampling, max_new_tokens, batch_size, seed):
    """Target-only `generate` of every prompt, batch_size at a time (speed.target_decode, seeded per batch)."""
    outputs = []
    for start in range(0, len(prompts), batch_size):
        outputs += target_decode(target, tok, prompts[start:start + batch_size], sampling=sampling,
                                 max_new_tokens=max_new_tokens, seed=seed + start)[1]
    return outputs


def _outputs_of_sd(target, draft, tok, prompts, rule, sampling, gamma, max_new_tokens, batch_size, seed):
    outputs, accepted, proposed = [], 0, 0
    for start in range(0, len(prompts), batch_size):
        res = speculative_generate(target, draft, prompts[start:start + batch_size], gamma=gamma,
                                   max_new_tokens=max_new_tokens, sampling=sampling, acceptance=rule,
                                   eos_token_id=tok.eos_token_id, record=False, seed=seed + start)
        outputs += res.sequences
        accepted, proposed = accepted + res.metrics.accepted, proposed + res.metrics.proposed
    return outputs, accepted / max(proposed, 1)  # alpha_tok: accepted over proposed draft tokens


def _same_work_as_before(out: Path, settings: dict) -> None:
    """Record what the rows in `out` were made with; a rerun that would decode other work into them is refused
    (its rows would sit beside rows made differently)."""
    file = out / "settings.json"
    if file.is_file():
        before = json.loads(file.read_text())
        changed = [f"{k}: {before.get(k)!r} -> {v!r}" for k, v in settings.items() if before.get(k) != v]
        require(not changed, f"{out} holds rows made with other settings ({'; '.join(changed)}): pass a new --out, "
                             "or the settings it was made with.")
    else:
        write_text(json.dumps(settings, indent=1) + "\n", file)


def _drafts(args, cfg, target, tok) -> dict:
    drafts = {}
    for name in filter(None, args.drafts.split(",")):
        require(args.run is not None, "--drafts names drafts of a study run: pass its run directory with --run.")
        drafts[name] = decoding_draft(cfg, args.run, target, tok, name)
    for spec in args.draft:
        label, sep, path = spec.partition("=")
        require(bool(sep) and path, f"--draft {spec!r}: write LABEL=DIRECTORY, e.g. head=runs/x/drafts/eagle/student.")
        drafts[label] = load_draft(cfg.for_decoding(), target, tok, path)
    require(drafts, "No drafts: name a run's drafts (--run DIR --drafts baseline,fkl) or saved ones (--draft L=DIR).")
    return {k: d.to(target.dtype) if isinstance(d, torch.nn.Module) else d for k, d in drafts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the preset the drafts were trained with (teacher, task, data)")
    parser.add_argument("--run", default=None, help="the study's run directory holding --drafts")
    parser.add_argument("--drafts", default="", help="drafts of --run, e.g. baseline,fkl (baseline: undistilled)")
    parser.add_argument("--draft", action="append", default=[], help="LABEL=DIR: a saved draft or head (repeatable)")
    parser.add_argument("--settings", default=",".join(SWEEP), help="acceptance settings (quality.SWEEP)")
    parser.add_argument("--prompts", type=int, default=64, help="held-out prompts judged per setting")
    parser.add_argument("--timed", type=int, default=12, help="of those, how many are timed at batch 1")
    parser.add_argument("--gamma", type=int, default=None, help="draft block length (default: the preset's gamma)")
    parser.add_argument("--batch-size", type=int, default=16, help="batch of the decodes that are judged")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the preset's")
    parser.add_argument("--top-p", type=float, default=None, help="decoding top-p (default: the preset's); at 1.0 the "
                        "share outside the target's nucleus can see what a lenient rule lets through")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="folder for the rows, the table and the figure")
    args = parser.parse_args()
    cfg = pair_config(args.config)
    task = cfg.task
    temperature = task_spec(task).temperature
    settings = [s for s in args.settings.split(",") if s]
    for s in settings:
        acceptance_rule(s, temperature)  # every setting understood before any decoding
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sampling = SamplingConfig(temperature=temperature, top_p=cfg.top_p if args.top_p is None else args.top_p)
    max_new = args.max_new_tokens or cfg.max_new_tokens
    gamma = args.gamma or cfg.gamma
    _same_work_as_before(out, {"config": str(Path(args.config).resolve()), "task": task, "prompts": args.prompts,
                               "timed": args.timed, "max_new_tokens": max_new, "gamma": gamma,
                               "temperature": temperature, "top_p": sampling.top_p, "dtype": args.dtype,
                               "seed": args.seed})
    target, tok = load_model(cfg.teacher, dtype=getattr(torch, args.dtype))
    drafts = _drafts(args, cfg, target, tok)
    data = load_prompts(task, cfg.eval_split, args.prompts, source=cfg.data_source, tokenizer=tok,
                        max_article_tokens=cfg.max_article_tokens, keep_reference=True, seed=cfg.seed)
    prompts, references = render_prompts(tok, data), list(data["reference"])
    rows_file = out / "rows.jsonl"
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()] if rows_file.is_file() else []
    done = {(r["draft"], r["setting"]) for r in rows}

    def save_rows() -> None:
        write_text("".join(json.dumps(r) + "\n" for r in rows), rows_file)

    def finish(row: dict, judged: pd.DataFrame, timing: pd.DataFrame | None) -> None:
        stem = f"{row['draft']}_{row['setting'].replace(':', '')}"
        write_parquet(judged, out / f"{stem}_judged.parquet")
        if timing is not None:
            write_parquet(timing, out / f"{stem}_timing.parquet")
        rows.append(row)
        save_rows()
        print(json.dumps(row), flush=True)

    common = dict(temperature=temperature, batch_size=args.batch_size)
    if ("target", "generate") not in done:
        outputs = _outputs_of_generate(target, tok, prompts, sampling, max_new, args.batch_size, args.seed)
        judged = judge(task, tok, target, prompts, outputs, references, **common)
        finish({"draft": "target", "setting": "generate", **quality_summary(judged, task)}, judged, None)
    for label, draft in drafts.items():
        for setting in settings:
            if (label, setting) in done:
                continue
            rule = acceptance_rule(setting, temperature)
            outputs, alpha = _outputs_of_sd(target, draft, tok, prompts, rule, sampling, gamma, max_new,
                                            args.batch_size, args.seed)
            judged = judge(task, tok, target, prompts, outputs, references, **common)
            timing = time_decoding(target, draft, tok, prompts[: args.timed], gamma=gamma, sampling=sampling,
                                   batch_size=1, max_new_tokens=max_new, seed=args.seed, acceptance=rule,
                                   progress=f"{label} {setting}")
            finish({"draft": label, "setting": setting, "alpha_tok": alpha, "speedup": speedup_summary(timing),
                    "busy_rows": int(timing["busy"].sum()), **quality_summary(judged, task)}, judged, timing)
    order = ["target", *drafts]
    rows.sort(key=lambda r: (order.index(r["draft"]) if r["draft"] in order else len(order),
                             (["generate", *settings].index(r["setting"]) if r["setting"] in ["generate", *settings]
                              else 99)))
    save_rows()  # in the table's order: the table rebuilds from them
    write_text(quality_table(rows, task), out / "results.md")
    plot_quality_latency(rows, task, out / "quality_latency.png")
    print(f"table: {out / 'results.md'}\nfigure: {out / 'quality_latency.png'}")


if __name__ == "__main__":
    try:
        main()
    except DistillSpecError as err:
        sys.exit(f"error: {err}")
