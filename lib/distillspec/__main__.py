"""Command line: `python -m distillspec <command>`; see --help."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .errors import DistillSpecError


def _cmd_eval(args) -> None:
    """Batched SD of the teacher with a draft on task prompts; writes records and metrics under --out."""
    from .data import load_prompts, render_prompts, task_spec
    from .models import draft_from_teacher, load_model
    from .sampling import SamplingConfig
    from .specdec import speculative_generate

    spec = task_spec(args.task)
    target, tok = load_model(args.teacher)
    draft = load_model(args.draft)[0] if args.draft else draft_from_teacher(target, args.keep_layers)
    prompts = load_prompts(args.task, args.split, args.n, source=args.data, seed=args.seed, tokenizer=tok)
    ids = render_prompts(tok, prompts)
    sampling = SamplingConfig(greedy=True) if args.greedy else SamplingConfig(
        temperature=args.temperature or spec.temperature, top_p=args.top_p)
    started = time.perf_counter()
    res = speculative_generate(target, draft, ids, gamma=args.gamma, max_new_tokens=args.max_new_tokens
                               or spec.max_new_tokens, sampling=sampling, eos_token_id=tok.eos_token_id,
                               seed=args.seed, target_tokenizer=tok, draft_tokenizer=tok)
    paths = res.save(args.out)
    print(json.dumps({"seconds": time.perf_counter() - started, **res.metrics.as_dict()}, indent=2))
    print(f"records: {', '.join(str(p) for p in paths.values())}")


def _cmd_run(args) -> None:
    """The whole study (notebooks 01-04 via papermill) for one preset; resumes unless --force."""
    from .config import Config
    from .pipeline import run_pipeline
    from .steps import RunPaths

    started = time.perf_counter()
    drafts = [d.strip() for d in args.drafts.split(",") if d.strip()] if args.drafts else None
    run_dir = run_pipeline(args.config, run_dir=args.run_dir, force=args.force, publish_dir=args.publish,
                           drafts=drafts, results_from=args.results_from)
    paths = RunPaths(run_dir)
    print(f"done in {(time.perf_counter() - started) / 60:.1f} min")
    if not paths.results.is_file():
        print("results table: not yet (04 waits for the drafts not evaluated; see above)")
        return
    print(f"results table: {paths.results}")
    print(f"figures:       {paths.figures}")
    if args.publish:
        name = Config.from_yaml(run_dir / "config.yaml").name
        print(f"published to:  {Path(args.publish).resolve() / name}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m distillspec", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("eval", help="speculative decoding of teacher + draft on task prompts")
    ev.add_argument("--teacher", default="smollm2-135m-instruct")
    ev.add_argument("--draft", default=None, help="saved draft directory (default: derived from the teacher)")
    ev.add_argument("--keep-layers", type=int, default=10)
    ev.add_argument("--task", default="gsm8k")
    ev.add_argument("--split", default="test")
    ev.add_argument("--n", type=int, default=8)
    ev.add_argument("--data", default=None, help="'hub' or a directory of jsonl files (default $DISTILLSPEC_DATA_DIR)")
    ev.add_argument("--gamma", type=int, default=5)
    ev.add_argument("--max-new-tokens", type=int, default=None)
    ev.add_argument("--temperature", type=float, default=None)
    ev.add_argument("--top-p", type=float, default=0.95)
    ev.add_argument("--greedy", action="store_true")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--out", default="runs/eval")
    ev.set_defaults(func=_cmd_eval)
    run = sub.add_parser("run", help="the whole study for a config preset (papermill, resumable)")
    run.add_argument("--config", required=True, help="a preset from configs/")
    run.add_argument("--run-dir", default=None, help="default: runs/<config name>")
    run.add_argument("--force", action="store_true", help="rerun every step from scratch")
    run.add_argument("--publish", default=None,
                     help="copy figures, the results table and finished drafts' records here (e.g. figures)")
    run.add_argument("--drafts", default=None,
                     help="comma-separated subset of the drafts to train and evaluate (baseline and the training "
                          "runs' names), for a study that spans sessions; default: all")
    run.add_argument("--results-from", default=None,
                     help="a published records folder (e.g. figures/<name>/records) of an earlier session: its "
                          "finished drafts are imported, not retrained")
    run.set_defaults(func=_cmd_run)
    args = ap.parse_args(argv)
    try:
        args.func(args)
    except DistillSpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
