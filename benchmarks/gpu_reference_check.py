"""A reference preset's own path (01's prompt sets, 02's training, the eval command) at the real shapes of its pair
on one GPU, with random weights: for a GPU machine that reaches no model hub.

    python benchmarks/gpu_reference_check.py prepare --work gpucheck       # here: tokenizers and data subsets
    python benchmarks/gpu_reference_check.py run --preset qwen3_gsm8k --work gpucheck --steps 2   # on the GPU
    python benchmarks/gpu_reference_check.py run --preset smollm_cnndm --work gpucheck --steps 2

`prepare` writes the SmolLM2 tokenizer as it is (SmolLM's vocabulary) and padded to Qwen3's 151,936 ids (the extra
ids decode to `<pad_N>` and are never produced by encoding, so random models that sample any id can be decoded),
and the first rows of the local GSM8K and CNN/DM files. `run` builds random-init checkpoints of the pair's
published shapes and trains the preset's RKL draft with everything else as the preset has it (global batch 32 in
micro-batches of 8, its rollout length, precision auto = bf16 mixed precision on a GPU, gradient checkpointing)
for 2 x --steps steps twice: stopped after --steps (its checkpoint) and resumed, and straight through. It
reports memory, step times, the training logs, the saved draft's dtypes and how far its weights moved, and decodes
8 held-out prompts with the baseline and the trained draft through `python -m distillspec eval`. Prints one JSON
object; its acceptance numbers are those of random weights (near-uniform distributions), its memory and times the
shapes'. docs/distillation.md ("At real shapes on one GPU") has the measured results.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

QWEN3_VOCAB = 151936
LOGGED = ("step", "loss", "grad_norm", "learning_rate", "entropy", "teacher_entropy", "expected_accept", "step_time",
          "completions/mean_length", "train_runtime")
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# The published SmolLM (Llama-architecture) configurations; the Qwen3 ones live in gpu_decoder_bench.SHAPES.
SMOLLM = {
    "smollm-1.7b": dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=32, num_key_value_heads=32,
                        intermediate_size=8192),
    "smollm-360m": dict(hidden_size=960, num_hidden_layers=32, num_attention_heads=15, num_key_value_heads=5,
                        intermediate_size=2560),
}
# preset -> (teacher shape, student shape, vocabulary, the local splits that stand in for the hub's)
PAIRS = {
    "qwen3_gsm8k": ("qwen3-4b", "qwen3-0.6b", QWEN3_VOCAB, {}),
    "smollm_cnndm": ("smollm-1.7b", "smollm-360m", 49152, {"train_split": "validation"}),
}
SPLITS = {"gsm8k": ("train", "test"), "cnndm": ("validation", "test")}


def prepare(work: Path, data_dir: Path, rows: int) -> None:
    """The SmolLM2 tokenizer as is (SmolLM's vocabulary) and padded to Qwen3's, and the first `rows` rows of each
    local split of both tasks."""
    from distillspec.models import load_tokenizer

    tok = load_tokenizer("smollm2-135m-instruct")
    for vocab_size in {v for _, _, v, _ in PAIRS.values()}:
        tok_dir = work / f"tokenizer_{vocab_size}"
        tok.save_pretrained(tok_dir)
        spec = json.loads((tok_dir / "tokenizer.json").read_text())
        vocab = spec["model"]["vocab"]
        vocab.update({f"<pad_{i}>": i for i in range(len(vocab), vocab_size)})
        (tok_dir / "tokenizer.json").write_text(json.dumps(spec))
    for task, splits in SPLITS.items():
        for split in splits:
            out = work / "data" / task / f"{split}.jsonl"
            out.parent.mkdir(parents=True, exist_ok=True)
            with open(data_dir / task / f"{split}.jsonl") as src:
                out.write_text("".join(line for _, line in zip(range(rows), src)))


def random_checkpoint(shape: str, vocab_size: int, seed: int):
    """A random-init bf16 model of a published shape, on the GPU."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    sys.path.insert(0, str(Path(__file__).parent))
    from gpu_decoder_bench import random_model

    if shape in SMOLLM:
        cfg = LlamaConfig(vocab_size=vocab_size, tie_word_embeddings=True, max_position_embeddings=2048,
                          **SMOLLM[shape])
        torch.manual_seed(seed)
        with torch.device("cuda"):
            return AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    return random_model(shape, torch.bfloat16, seed)


def build_checkpoints(work: Path, preset: str) -> dict:
    """The preset's teacher and student shapes, random-init in bf16 (as the hub stores them), with the tokenizer."""
    import torch
    from transformers import AutoTokenizer

    teacher_shape, student_shape, vocab_size, _ = PAIRS[preset]
    tok = AutoTokenizer.from_pretrained(work / f"tokenizer_{vocab_size}")
    sizes = {}
    for name, shape, seed in (("teacher", teacher_shape, 0), ("student", student_shape, 1)):
        model = random_checkpoint(shape, vocab_size, seed)
        model.config.eos_token_id = model.generation_config.eos_token_id = tok.eos_token_id
        model.config.pad_token_id = tok.pad_token_id
        model.save_pretrained(work / name)
        tok.save_pretrained(work / name)
        sizes[name] = sum(p.numel() for p in model.parameters())
        del model
        torch.cuda.empty_cache()
    return sizes


def write_preset(work: Path, preset: str, steps: int) -> Path:
    """The reference preset with the local stand-ins and data, a checkpoint every `steps` steps."""
    import yaml

    derived = {"base": str(CONFIGS / f"{preset}.yaml"), "name": f"{preset}_shapes", "teacher": str(work / "teacher"),
               "student": str(work / "student"), "data_source": str(work / "data"), "n_train": 128, "n_eval": 8,
               "max_steps": 2 * steps, "save_steps": steps, "logging_steps": 1, "warmup_steps": 0, **PAIRS[preset][3]}
    path = work / f"{preset}_shapes.yaml"
    path.write_text(yaml.safe_dump(derived))
    return path


def weights_summary(folder: Path) -> dict:
    from safetensors import safe_open

    dtypes, total = set(), 0
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            for key in f.keys():
                t = f.get_slice(key)
                dtypes.add(t.get_dtype())
                total += 1
    return {"tensors": total, "dtypes": sorted(dtypes)}


def max_weight_change(before: Path, after: Path) -> float:
    """Largest |after - before| over the draft's weights (bf16 start, fp32 end)."""
    from safetensors.torch import load_file

    old = {k: v for f in before.glob("*.safetensors") for k, v in load_file(f).items()}
    new = {k: v for f in after.glob("*.safetensors") for k, v in load_file(f).items()}
    return max((new[k].float() - old[k].float()).abs().max().item() for k in old if k in new)


def eval_command(preset: Path, out: Path, draft: Path | None) -> dict:
    cmd = [sys.executable, "-m", "distillspec", "eval", "--config", str(preset), "--n", "8", "--max-new-tokens",
           "64", "--gamma", "5", "--out", str(out), *(["--draft", str(draft)] if draft else [])]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        return {"returncode": proc.returncode, "stderr": proc.stderr[-3000:]}
    text = proc.stdout
    metrics = json.loads(text[text.index("{"):text.rindex("}") + 1])
    return {"wall_s": round(time.perf_counter() - started, 1), **{k: metrics[k] for k in metrics
            if k in ("seconds", "alpha_tok", "alpha_pos", "tau", "tokens")}}


def dump(report: dict, out: Path | None) -> None:
    """The report so far (a run stopped at its time limit still leaves what it measured)."""
    if out is not None:
        out.write_text(json.dumps(report, indent=1, default=str))


def stop_at(step: int):
    """A trainer callback that ends training after `step` (after that step's checkpoint): an interruption."""
    from transformers import TrainerCallback

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = control.should_training_stop or state.global_step >= step

    return StopAt()


def logged_steps(log_path: Path) -> list[dict]:
    from distillspec.trainlog import read_log

    return [{k: v for k, v in row.items() if k in LOGGED and v == v}  # v == v drops NaN
            for row in read_log(log_path).round(6).to_dict(orient="records")]


def run(work: Path, preset: str, steps: int, out: Path | None = None) -> dict:
    """Build the stand-ins, train RKL for 2 x steps interrupted after `steps` and resumed, train it again without
    the interruption, compare, and decode with the baseline and the trained draft."""
    import torch

    from distillspec.study.preset import StudyConfig
    from distillspec.distillation import distill
    from distillspec.pair import load_target
    from distillspec.study.rundir import RunPaths, load_prompt_file
    from distillspec.study.stages import prepare_data, train_draft

    report = {"preset": preset, "device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    started = time.perf_counter()
    report["params"] = build_checkpoints(work, preset)
    report["build_s"] = round(time.perf_counter() - started, 1)
    dump(report, out)
    cfg_path = write_preset(work, preset, steps)
    cfg = StudyConfig.from_yaml(cfg_path)  # 2 x steps, a checkpoint after `steps`
    teacher, _ = load_target(cfg)
    report["teacher_dtype"] = str(next(teacher.parameters()).dtype)
    del teacher
    torch.cuda.empty_cache()
    legs = {}
    for leg in ("interrupted", "resumed", "straight"):
        run_dir = work / ("run" if leg != "straight" else "run_straight")
        if leg != "resumed":
            shutil.rmtree(run_dir, ignore_errors=True)
            prepare_data(cfg, run_dir)
        torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        if leg == "interrupted":  # what train_draft does, with a callback that stops it
            paths = RunPaths(run_dir)
            result = distill(cfg.run_config("rkl"), paths.draft_dir("rkl"),
                             dataset=load_prompt_file(paths.train_prompts), callbacks=[stop_at(steps)])
        else:
            result = train_draft(cfg, run_dir, "rkl")
        legs[leg] = {"train_s": round(time.perf_counter() - started, 1), "resumed_from": result.resumed_from,
                     "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                     "checkpoints": sorted(p.name for p in result.output_dir.glob("checkpoint-*"))}
        if leg != "interrupted":
            legs[leg]["log"] = logged_steps(result.log_path)
            legs[leg]["saved_student"] = weights_summary(result.student_dir)
            legs[leg]["max_weight_change"] = max_weight_change(work / "student", result.student_dir)
        report["legs"] = legs
        dump(report, out)
    losses = {leg: {r["step"]: r["loss"] for r in legs[leg]["log"] if "loss" in r} for leg in ("resumed", "straight")}
    report["loss_resumed_minus_straight"] = {s: losses["resumed"][s] - losses["straight"][s]
                                             for s in losses["straight"] if s in losses["resumed"]}
    report["eval_baseline"] = eval_command(cfg_path, work / "eval_baseline", None)
    dump(report, out)
    report["eval_trained"] = eval_command(cfg_path, work / "eval_rkl", work / "run" / "drafts" / "rkl" / "student")
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=["prepare", "run"])
    ap.add_argument("--preset", choices=sorted(PAIRS), default="qwen3_gsm8k")
    ap.add_argument("--work", type=Path, default=Path("gpucheck"))
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("DISTILLSPEC_DATA_DIR", "../shared/data")))
    ap.add_argument("--rows", type=int, default=200, help="rows of each GSM8K split that prepare copies")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON report here")
    args = ap.parse_args()
    work = args.work.resolve()
    if args.step == "prepare":
        prepare(work, args.data, args.rows)
        print(f"prepared {work}")
    else:
        report = run(work, args.preset, args.steps, args.out)
        dump(report, args.out)
        print(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
