"""Worker of tests/test_multiprocess.py: one distillation run, launched alone or by `accelerate launch` with 2
CPU processes (gloo), writing what the tests check. Not collected by pytest (no test_ prefix).

FSDP on CPU: accelerate turns FSDP on only for accelerator back-ends, so with --fsdp-on-cpu this worker (and only
it) switches the CPU process group to FSDP2 after accelerate set it up. Everything after that — sharding, the
trainer, the decoder, the save — is the library's own code path, as on GPUs.
"""

import argparse
import json
import os
from pathlib import Path

import torch
from transformers import TrainerCallback


def enable_fsdp_on_cpu() -> None:
    from accelerate import state
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    original = state.AcceleratorState.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if os.environ.get("ACCELERATE_USE_FSDP", "false") == "true" and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            if getattr(self, "fsdp_plugin", None) is None:
                self.fsdp_plugin = FullyShardedDataParallelPlugin()

    state.AcceleratorState.__init__ = init


class StopAt(TrainerCallback):
    """An interruption at `step` on every process (as a killed job)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


class KeepTrained(TrainerCallback):
    """The trained weights as full tensors, gathered on every process (a collective under FSDP), kept by rank 0."""

    def __init__(self, path):
        self.path = path

    def on_train_end(self, args, state, control, model=None, **kwargs):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        from torch.distributed.tensor import DTensor

        sharded = any(isinstance(p, DTensor) for p in model.parameters())
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if int(os.environ.get("RANK", 0)) == 0:
            torch.save({k: v.detach().clone() for k, v in full.items()}, self.path)
            (self.path.parent / "engine.json").write_text(json.dumps({"sharded": sharded}))


def record_rollouts(report_dir: Path) -> None:
    """Append each SKD rollout of this process (decoder steps, tokens) to report_dir/rollouts_<rank>.jsonl."""
    import distillspec.distillation as distill_module

    original = distill_module.speculative_generate
    path = report_dir / f"rollouts_{os.environ.get('RANK', 0)}.jsonl"

    def wrapped(*args, **kwargs):
        res = original(*args, **kwargs)
        with open(path, "a") as f:
            f.write(json.dumps({"steps": res.metrics.steps, "sequences": res.sequences}) + "\n")
        return res

    distill_module.speculative_generate = wrapped


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--overrides", default="{}", help="JSON of config overrides")
    ap.add_argument("--stop-at", type=int, default=None)
    ap.add_argument("--fsdp-on-cpu", action="store_true")
    ap.add_argument("--same-prompt", action="store_true", help="every training row is the same prompt")
    args = ap.parse_args()
    if args.fsdp_on_cpu:
        enable_fsdp_on_cpu()
    from datasets import Dataset

    from distillspec.study.preset import StudyConfig
    from distillspec.distillation import distill

    out = Path(args.out)
    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    record_rollouts(report)
    cfg = StudyConfig.from_yaml(args.config, **json.loads(args.overrides)).run_config()
    dataset = None
    if args.same_prompt:
        dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": "What is 12 times 7?"}]}] * 64)
    callbacks = [KeepTrained(report / "trained.pt")] + ([StopAt(args.stop_at)] if args.stop_at else [])
    result = distill(cfg, out, dataset=dataset, callbacks=callbacks)
    if int(os.environ.get("RANK", 0)) == 0:
        (report / "result.json").write_text(json.dumps({"resumed_from": result.resumed_from,
                                                        "world_size": int(os.environ.get("WORLD_SIZE", 1))}))


if __name__ == "__main__":
    main()
