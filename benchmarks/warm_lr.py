"""Does on-policy training at a given learning rate keep or erode a warm-started draft?

    DISTILLSPEC_DATA_DIR=../shared/data python benchmarks/warm_lr.py --config configs/offline_gsm8k_warm.yaml \
        --run fkl_s0 --steps 40 --lr 1e-3 1e-4

Needs the study's warm start trained in its run dir (runs/<name>: `make run CONFIG=... DRAFTS=baseline`). For each
learning rate, trains the study's run `--run` from that warm draft for `--steps` steps (the preset's recipe otherwise)
in a scratch run dir beside it (runs/<name>_lr<lr>, sharing its data and warm draft; resumable, a finished one is
reused), then decodes the warm start curve's held-out prompts (its `eval_prompts`, the study's gamma, sampling and cut
head, fp32) with the warm draft and with each trained draft against the teacher. Writes
runs/<name>_warm_lr.json and prints a Markdown table.
"""

import argparse
from pathlib import Path

import torch

from distillspec.atomic import write_json
from distillspec.data import render_prompts
from distillspec.errors import require
from distillspec.models import load_model
from distillspec.pair import load_target
from distillspec.sampling import SamplingConfig
from distillspec.study import stages
from distillspec.study.preset import StudyConfig
from distillspec.study.rundir import RunPaths, load_prompt_file
from distillspec.validation import served_acceptance
from distillspec.warm_start import WarmStart


def scratch_run(run_dir: Path, lr: float) -> Path:
    """A run dir that shares run_dir's prompts and warm draft, for training at another learning rate."""
    scratch = run_dir.parent / f"{run_dir.name}_lr{lr:g}"
    (scratch / "drafts").mkdir(parents=True, exist_ok=True)
    for link, target in ((scratch / "data", run_dir / "data"),
                         (scratch / "drafts" / "baseline", run_dir / "drafts" / "baseline")):
        if not link.exists():
            link.symlink_to(target.resolve())
    return scratch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a study preset with warm_start")
    parser.add_argument("--run", default="fkl_s0", help="the study's training run to try (its recipe and seed)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--lr", type=float, nargs="+", default=[1e-3, 1e-4])
    args = parser.parse_args()

    cfg = StudyConfig.from_yaml(args.config)
    require(cfg.warm_start is not None, f"{args.config} has no warm_start: this check needs a warm-started study.")
    run_dir = Path("runs") / cfg.name
    paths = RunPaths(run_dir)
    require(paths.student("baseline").is_dir(),
            f"No warm draft in {run_dir}: train it first (make run CONFIG={args.config} DRAFTS=baseline).")
    trained = {}
    for lr in args.lr:
        scratch = scratch_run(run_dir, lr)
        stages.train_draft(cfg, scratch, args.run, learning_rate=lr, max_steps=args.steps, save_steps=args.steps)
        trained[f"lr {lr:g}"] = RunPaths(scratch).student(args.run)

    target, tok = load_target(cfg.run_config(args.run))
    vocab = stages.draft_vocab(cfg, run_dir, target, tok)
    warm = WarmStart.of(cfg.warm_start)
    prompts = render_prompts(tok, load_prompt_file(paths.eval_prompts))[: warm.eval_prompts]
    sampling = SamplingConfig(temperature=cfg.temperature, top_p=cfg.top_p)
    rows = {}
    for label, student_dir in {"warm draft": paths.student("baseline"), **trained}.items():
        student, _ = load_model(student_dir, dtype=torch.float32)
        rows[label] = served_acceptance(target, student, prompts, gamma=cfg.gamma, sampling=sampling,
                                        max_new_tokens=cfg.max_new_tokens, eos_token_id=tok.eos_token_id,
                                        draft_vocab_ids=None if vocab is None else vocab["ids"], seed=cfg.seed)
    write_json(run_dir.parent / f"{cfg.name}_warm_lr.json", {"run": args.run, "steps": args.steps, "rows": rows})
    print(f"| draft ({args.run}, {args.steps} steps) | alpha_pos | alpha_tok |\n|---|---|---|")
    for label, r in rows.items():
        print(f"| {label} | {r['alpha_pos']:.3f} | {r['alpha_tok']:.3f} |")


if __name__ == "__main__":
    main()
