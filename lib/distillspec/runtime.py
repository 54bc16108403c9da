"""Where and how the models run: this process's device, precision, the batch split over processes, and the
distributed engine (DDP, FSDP2) — one place for what changes between a laptop, one GPU and many.
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .errors import DistillSpecError, require

PRECISIONS = ("auto", "fp32", "bf16")


def cuda_available() -> bool:
    return torch.cuda.is_available()


def process_device() -> torch.device:
    """This process's device: cuda:<LOCAL_RANK> under a multi-process launcher (accelerate, torchrun), cuda:0 in
    a single process with a GPU, else cpu. Models load straight onto it, never onto GPU 0 first."""
    if not cuda_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def resolve_precision(precision: str) -> str:
    """'auto' is bf16 on CUDA (mixed precision: fp32 weights, bf16 autocast) and fp32 elsewhere."""
    require(precision in PRECISIONS, f"precision='{precision}' must be one of {PRECISIONS} (auto: bf16 mixed "
                                     "precision on a GPU, fp32 on CPU).")
    if precision == "auto":
        return "bf16" if cuda_available() else "fp32"
    return precision


def compute_dtype(precision: str) -> torch.dtype:
    """dtype of frozen models (teacher, evaluation) and of the autocast region under `precision`."""
    return torch.bfloat16 if resolve_precision(precision) == "bf16" else torch.float32


def cpu_has_bf16() -> bool | None:
    """Whether this CPU has bf16 instructions (x86: avx512_bf16 or amx_bf16; arm64: bf16); None if unknown."""
    caps = torch.cpu.get_capabilities()
    keys = [k for k in ("avx512_bf16", "amx_bf16", "bf16") if k in caps]
    return any(caps[k] for k in keys) if keys else None


def machine() -> str:
    """This process's device in words, stored with every timing so results from different machines are told
    apart: the GPU's name, or the CPU's with its cores and whether it has bf16 instructions."""
    if cuda_available():
        return f"cuda: {torch.cuda.get_device_name(process_device())}"
    caps = torch.cpu.get_capabilities()
    bf16 = {True: "bf16 instructions", False: "no bf16 instructions", None: "bf16 instructions unknown"}
    return (f"cpu: {caps.get('cpu_name', caps.get('architecture', 'unknown'))}, "
            f"{caps.get('num_physical_cores', os.cpu_count())} cores, {bf16[cpu_has_bf16()]}")


BUSY_SHARE = 0.10  # other processes' share of the CPU above which a timing is flagged as timed on a busy machine


class OtherLoad:
    """Other processes' share of the machine's CPU time over a `with` block: the machine's busy time (/proc/stat)
    less this process's own and its waited-for children's (/proc/self/stat), over the block's CPU capacity (all
    cores). `share` is None where /proc is absent (not Linux)."""

    share: float | None = None

    @staticmethod
    def _read() -> tuple[int, int, int] | None:
        try:
            with open("/proc/stat") as f:
                ticks = [int(x) for x in f.readline().split()[1:]]
            with open("/proc/self/stat") as f:
                own = f.read().rsplit(")", 1)[1].split()  # fields after the command name
        except OSError:
            return None
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
        total = sum(ticks[:8])  # user .. steal (guest time is already counted in user)
        return total - idle, total, sum(int(x) for x in own[11:15])  # utime, stime, cutime, cstime

    def __enter__(self) -> OtherLoad:
        self._start = self._read()
        return self

    def __exit__(self, *exc) -> None:
        end = self._read()
        if self._start is None or end is None or end[1] == self._start[1]:
            return
        busy, total, own = (b - a for a, b in zip(self._start, end))
        self.share = min(1.0, max(0.0, (busy - own) / total))


def warn_if_emulated_bf16(precision: str, what: str) -> None:
    """Warn when `precision` runs bf16 on a CPU without bf16 instructions: there it is no faster than fp32 and
    slower for multi-token forwards (docs/speed.md), so timings from it say little about CPUs that have them."""
    if resolve_precision(precision) == "bf16" and not cuda_available() and cpu_has_bf16() is False:
        warnings.warn(f"{what} is bf16, but this CPU ({machine()}) has no bf16 instructions: bf16 runs no faster than "
                      "fp32 here and slower for multi-token forwards such as SD's verification, and its timings do not "
                      "carry over to CPUs that have them. Set it to fp32 on this machine.", stacklevel=2)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


def rank() -> int:
    return int(os.environ.get("RANK", 0))


@dataclass(frozen=True)
class BatchLayout:
    """How one optimiser step's global batch is split: processes x per-device batch x accumulation steps."""

    global_batch: int
    processes: int
    per_device: int
    accumulation: int


def batch_layout(global_batch: int, micro_batch: int | None, processes: int) -> BatchLayout:
    """Split the preset's global batch over `processes`, at most `micro_batch` sequences per forward (None: no
    accumulation), so the same preset is the same experiment on 1 or 8 GPUs."""
    require(global_batch % processes == 0, f"batch_size={global_batch} (the global batch per optimiser step) does "
            f"not divide over {processes} processes; use a multiple of {processes}.")
    per_process = global_batch // processes
    per_device = per_process if micro_batch is None else min(micro_batch, per_process)
    require(per_process % per_device == 0, f"batch_size={global_batch} over {processes} processes is {per_process} "
            f"sequences each, which micro_batch_size={micro_batch} does not divide; pick a micro_batch_size that "
            f"divides {per_process}.")
    return BatchLayout(global_batch, processes, per_device, per_process // per_device)


def check_engine(lora: bool = False) -> None:
    """Refuse engines whose sharded parameters our loss and decoder cannot read (DeepSpeed ZeRO-3), and LoRA
    under FSDP (its merge and save are not sharding-aware here)."""
    require(not (lora and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"),
            "LoRA with FSDP is not supported; train LoRA drafts with DDP (configs/accelerate/ddp.yaml) or one GPU.")
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "")
        require(stage != "3", "DeepSpeed ZeRO-3 is not supported: distillspec reads the LM heads outside the "
                "wrapped forward and decodes without collectives. Shard with FSDP2 instead (accelerate launch "
                "--config_file configs/accelerate/fsdp2.yaml), or use DDP (configs/accelerate/ddp.yaml).")


def check_8bit_teacher() -> None:
    """An 8-bit teacher needs bitsandbytes' CUDA kernels: refuse before anything is loaded."""
    require(cuda_available(), "teacher_8bit: true needs a CUDA GPU (bitsandbytes 8-bit kernels); none is "
                              "available here. Set teacher_8bit: false on CPU.")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise DistillSpecError("teacher_8bit: true needs bitsandbytes: pip install -r requirements.txt") from err


def full_weight(weight: torch.Tensor) -> torch.Tensor:
    """A plain tensor of the whole weight: FSDP2 keeps parameters as sharded DTensors outside the wrapped forward
    (differentiable: the gradient flows back to the shards)."""
    from torch.distributed.tensor import DTensor

    return weight.full_tensor() if isinstance(weight, DTensor) else weight


def _fsdp_modules(model) -> list:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextmanager
def full_params(*models):
    """Gather every FSDP2-sharded parameter of `models` for the duration of the block, so forwards inside it run
    without collectives: each process may then decode for a different number of steps (no lockstep needed).
    A no-op for unsharded models (single process, DDP)."""
    modules = [m for model in models for m in _fsdp_modules(model)]
    if not modules:
        yield
        return
    reshard = [any(g._reshard_after_forward for g in m._get_fsdp_state()._fsdp_param_groups) for m in modules]
    with torch.no_grad():
        for m in modules:
            m.unshard()
            m.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for m, value in zip(modules, reshard, strict=True):
            m.set_reshard_after_forward(value, recurse=False)
            m.reshard()


__all__ = ["PRECISIONS", "batch_layout", "BatchLayout", "check_8bit_teacher", "check_engine", "compute_dtype",
           "cpu_has_bf16", "full_params", "full_weight", "machine", "process_device", "rank", "resolve_precision",
           "warn_if_emulated_bf16", "world_size"]
