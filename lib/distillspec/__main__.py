"""Command line: `python -m distillspec <command>`; see --help."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .errors import DistillSpecError, TrainingInterrupted
from .threads import set_threads


def _cmd_eval(args) -> None:
    """Batched SD of the teacher with a draft on task prompts; writes records and metrics under --out."""
    from .data import load_prompts, render_prompts
    from .draft_tree import parse_tree
    from .drafts import load_pair
    from .specdec import speculative_generate
    from .study.preset import pair_config

    cfg = pair_config(args.config, teacher=args.teacher, keep_layers=args.keep_layers)
    task = args.task or cfg.task
    if task != cfg.task:  # another task than the preset's: that task's sampling defaults
        cfg = cfg.replace(task=task)
    sampling, max_new_tokens = eval_sampling(cfg, args)  # bad flags refused before any model loads
    tree = None if args.draft_tree is None else parse_tree(args.draft_tree)
    target, draft, tok = load_pair(cfg, args.draft)
    source = args.data if args.data is not None else cfg.data_source  # a preset's own data, as the data stage reads it
    prompts = load_prompts(task, args.split, args.n, source=source, seed=args.seed, tokenizer=tok)
    ids = render_prompts(tok, prompts)
    started = time.perf_counter()
    res = speculative_generate(target, draft, ids, gamma=args.gamma, max_new_tokens=max_new_tokens, sampling=sampling,
                               eos_token_id=tok.eos_token_id, seed=args.seed, target_tokenizer=tok, draft_tokenizer=tok,
                               draft_tree=tree)
    paths = res.save(args.out)
    print(json.dumps({"seconds": time.perf_counter() - started, **res.metrics.as_dict()}, indent=2))
    print(f"records: {', '.join(str(p) for p in paths.values())}")


def eval_sampling(cfg, args):
    """(SamplingConfig, new tokens) of `eval`: the preset's (or the task's defaults), each overridden by its flag;
    --greedy or --temperature 0 decode greedily. Zero or negative lengths and temperatures are refused, not read
    as unset."""
    from .errors import require
    from .sampling import SamplingConfig

    if args.max_new_tokens is not None:
        require(args.max_new_tokens >= 1, f"--max-new-tokens {args.max_new_tokens}: must be >= 1 (leave it out for "
                                          f"the preset's {cfg.max_new_tokens}).")
    if args.temperature is not None:
        require(args.temperature >= 0, f"--temperature {args.temperature}: must be >= 0 (0 decodes greedily).")
    max_new_tokens = cfg.max_new_tokens if args.max_new_tokens is None else args.max_new_tokens
    temperature = cfg.temperature if args.temperature is None else args.temperature
    top_p = cfg.top_p if args.top_p is None else args.top_p
    if args.greedy or temperature == 0:
        return SamplingConfig(greedy=True), max_new_tokens
    return SamplingConfig(temperature=temperature, top_p=top_p), max_new_tokens


def _cmd_train(args) -> None:
    """One training run of a study, on every process of `accelerate launch` (DDP, FSDP2) or alone."""
    import torch
    from accelerate import PartialState

    from .study.preset import StudyConfig
    from .study.handoff import bind_config
    from .study.rundir import RunPaths, default_run_dir, run_dir_lock
    from .study.stages import forget_draft, prepare_data, train_draft

    cfg = StudyConfig.from_yaml(args.config)
    run_dir = Path(args.run_dir).resolve() if args.run_dir else default_run_dir(cfg)
    state = PartialState(cpu=not torch.cuda.is_available())  # the process group the trainer then uses
    with run_dir_lock(run_dir, f"train --draft {args.draft}", hold=state.is_main_process):
        with state.main_process_first():  # the prompt sets, written once; the other processes then find them
            bind_config(cfg, run_dir)
            if not RunPaths(run_dir).train_prompts.is_file():
                prepare_data(cfg, run_dir)
            if args.retrain and state.is_main_process:
                forget_draft(cfg, run_dir, args.draft)
        result = train_draft(cfg, run_dir, args.draft)
    if state.is_main_process:
        print(f"student: {result.student_dir}")


def _cmd_export(args) -> None:
    """A self-contained checkpoint of a trained draft for transformers or vLLM, with the snippet to use it."""
    from .export import export_draft

    out = export_draft(args.draft, args.out, engine=args.to, target=args.target, gamma=args.gamma, force=args.force)
    print(f"exported to {out}; how to use it: {out / 'USAGE.md'}")


def _cmd_run(args) -> None:
    """The whole study (its four stages as notebooks, via papermill) for one preset; resumes unless --force."""
    from .study.pipeline import run_pipeline
    from .study.preset import StudyConfig
    from .study.rundir import RunPaths

    started = time.perf_counter()
    drafts = [d.strip() for d in args.drafts.split(",") if d.strip()] if args.drafts else None
    run_dir = run_pipeline(args.config, run_dir=args.run_dir, force=args.force, publish_dir=args.publish,
                           drafts=drafts, results_from=args.results_from)
    paths = RunPaths(run_dir)
    print(f"done in {(time.perf_counter() - started) / 60:.1f} min")
    if not paths.results.is_file():
        print("results table: not yet (the analysis waits for the drafts not evaluated; see above)")
        return
    print(f"results table: {paths.results}")
    print(f"figures:       {paths.figures}")
    if args.publish:
        name = StudyConfig.from_yaml(run_dir / "config.yaml").name
        print(f"published to:  {Path(args.publish).resolve() / name}")


def _cmd_retime(args) -> None:
    """The evaluation stage's timing again on this machine for drafts already evaluated; publishes their records
    when asked."""
    from .study.pipeline import publish
    from .study.preset import StudyConfig
    from .study.handoff import bind_config
    from .study.rundir import default_run_dir, expand_drafts, run_dir_lock
    from .study.stages import retime_drafts

    cfg = StudyConfig.from_yaml(args.config)
    run_dir = Path(args.run_dir).resolve() if args.run_dir else default_run_dir(cfg)
    names = expand_drafts(cfg, [d.strip() for d in args.drafts.split(",") if d.strip()])
    with run_dir_lock(run_dir, "retime"):
        bind_config(cfg, run_dir)
        print(retime_drafts(cfg, run_dir, names).to_string(index=False))
        if args.publish:
            publish(cfg, run_dir, Path(args.publish))
        print(f"published to {Path(args.publish).resolve() / cfg.name}")
    print("the next `python -m distillspec run` rebuilds the analysis table with these timings.")


def _cmd_training_signal(args) -> None:
    from .study.training_signal import write_report

    rho = write_report(args.published, args.out)
    print(rho.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"per-draft table, rho table and figure in {Path(args.out).resolve()}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m distillspec", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("eval", help="speculative decoding of teacher + draft on task prompts")
    ev.add_argument("--config", default=None, help="a preset: its teacher and baseline draft (default: the flags)")
    ev.add_argument("--teacher", default=None, help="default: smollm2-135m-instruct (ignored with --config)")
    ev.add_argument("--draft", default=None, help="saved draft directory (default: the baseline draft: the "
                                                  "config's student, or derived from the teacher)")
    ev.add_argument("--keep-layers", type=int, default=None, help="layers of the derived draft (default 10)")
    ev.add_argument("--task", default=None, help="default: the config's task (gsm8k)")
    ev.add_argument("--split", default="test")
    ev.add_argument("--n", type=int, default=8)
    ev.add_argument("--data", default=None, help="'hub' or a directory of jsonl files (default: the config's "
                                                 "data_source, else $DISTILLSPEC_DATA_DIR)")
    ev.add_argument("--gamma", type=int, default=5)
    ev.add_argument("--draft-tree", default=None, help="draft a static tree instead of a chain of gamma: rank paths "
                    "separated by '|', depths by '.', e.g. '0|1|0.0' (docs/decoder.md, 'Draft trees')")
    ev.add_argument("--max-new-tokens", type=int, default=None, help="default: the preset's (else the task's)")
    ev.add_argument("--temperature", type=float, default=None,
                    help="default: the preset's (else the task's); 0 decodes greedily")
    ev.add_argument("--top-p", type=float, default=None, help="default: the preset's (0.95)")
    ev.add_argument("--greedy", action="store_true", help="decode greedily (as --temperature 0)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--out", default="runs/eval")
    ev.set_defaults(func=_cmd_eval)
    run = sub.add_parser("run", help="the whole study for a config preset (papermill, resumable)")
    run.add_argument("--config", required=True, help="a preset from configs/")
    run.add_argument("--run-dir", default=None, help="default: runs/<config name>")
    run.add_argument("--force", action="store_true", help="rerun every step from scratch (a run directory made "
                                                           "with other settings is emptied first)")
    run.add_argument("--publish", default=None,
                     help="copy figures, the results table and finished drafts' records here (e.g. figures)")
    run.add_argument("--drafts", default=None,
                     help="comma-separated subset of the drafts to train and evaluate (baseline and the training "
                          "runs' names; with seeds, a recipe's name means all its seeds: fkl = fkl_s0,fkl_s1,...), "
                          "for a study run in parts; default: all")
    run.add_argument("--results-from", default=None,
                     help="a published records folder (e.g. figures/<name>/records) of earlier parts of the study: its "
                          "finished drafts are imported, not retrained")
    run.set_defaults(func=_cmd_run)
    rt = sub.add_parser("retime", help="time evaluated drafts against the target again, on this machine")
    rt.add_argument("--config", required=True, help="a preset from configs/")
    rt.add_argument("--drafts", required=True, help="comma-separated drafts (a recipe's name means all its seeds)")
    rt.add_argument("--run-dir", default=None, help="default: runs/<config name>, as `run` uses")
    rt.add_argument("--publish", default=None, help="copy the drafts' records here afterwards (e.g. figures)")
    rt.set_defaults(func=_cmd_retime)
    tr = sub.add_parser("train", help="one training run of a study (use under accelerate launch for DDP / FSDP2)")
    tr.add_argument("--config", required=True, help="a preset from configs/")
    tr.add_argument("--draft", required=True,
                    help="the training run's name (a divergence or an extra_runs name; with seeds, <name>_s<seed>)")
    tr.add_argument("--run-dir", default=None, help="default: runs/<config name>, as `run` uses")
    tr.add_argument("--retrain", action="store_true", help="train the draft again from scratch: its checkpoints, "
                                                          "student, settings and records are removed first")
    tr.set_defaults(func=_cmd_train)
    ex = sub.add_parser("export", help="a trained draft as a self-contained checkpoint for transformers or vLLM")
    ex.add_argument("--draft", required=True, help="a trained draft directory (e.g. runs/<name>/drafts/rkl/student)")
    ex.add_argument("--to", choices=["hf", "vllm"], default="hf")
    ex.add_argument("--out", required=True, help="where to write the checkpoint")
    ex.add_argument("--target", default=None, help="the target model the snippet names (default: from the draft's "
                                                   "training config, when found)")
    ex.add_argument("--gamma", type=int, default=None, help="draft tokens per step in the snippet (default: the "
                                                             "gamma of the study that trained the draft)")
    ex.add_argument("--force", action="store_true", help="replace a non-empty --out folder that is not an earlier "
                                                         "export (its files are deleted)")
    ex.set_defaults(func=_cmd_export)
    ts = sub.add_parser("training-signal", help="does the training log's expected acceptance predict served "
                                                "alpha_pos? (every published draft, Spearman's rho with CIs)")
    ts.add_argument("--published", default="figures", help="the folder studies are published to (default: figures)")
    ts.add_argument("--out", default="figures/training_signal", help="where the tables and the figure go")
    ts.set_defaults(func=_cmd_training_signal)
    for parser in sub.choices.values():
        parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    args = ap.parse_args(argv)
    if args.command != "run":  # `run` computes in its notebooks' kernels, each started with its stage's setting
        set_threads("timing" if args.command == "retime" else "work")
    from .quiet import quiet_library_output

    quiet_library_output()
    try:
        args.func(args)
    except (Exception, KeyboardInterrupt) as err:  # one line a user can act on; the traceback with --debug
        if args.debug:
            raise
        code, message = error_line(err)
        print(f"error: {message}", file=sys.stderr)
        return code
    return 0


def error_line(err: BaseException) -> tuple[int, str]:
    """(exit code, one line) for an error of a command: the problem, the file, the fix."""
    if isinstance(err, TrainingInterrupted):
        return 130, str(err)
    if isinstance(err, DistillSpecError):
        return 2, str(err)
    if isinstance(err, OSError) and err.filename:
        return 2, (f"{err.filename}: {err.strerror or err}; check that the path exists and that you may write "
                   "there, or pick another (e.g. --run-dir, --out).")
    if isinstance(err, KeyboardInterrupt):
        return 130, "interrupted."
    return 1, f"unexpected {type(err).__name__}: {err} (rerun with --debug for the traceback, and report it)."


if __name__ == "__main__":
    sys.exit(main())
