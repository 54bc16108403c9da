"""OpenMP's waiting policy for each entry point, set before torch starts: torch's OpenMP runtime reads it once, when
it loads, so setting it later changes nothing. No torch import here.

Two roles (docs/speed.md, "Threads", has the measurements behind them):
- "timing": what times decoding (the evaluation stage, `retime`, the timing benchmarks) keeps OpenMP's active
  waiting, the fastest on a quiet CPU, and records how busy the machine was while it timed (speed.py);
- "work": everything else (training, the other stages, the command line's other commands, the tests) waits
  passively, so a thread that finishes early sleeps instead of spinning against another process for the core.

A value the user set in the environment is kept."""

from __future__ import annotations

import os
import sys
import warnings

WAIT_POLICY = {"timing": "ACTIVE", "work": "PASSIVE"}


def thread_env(role: str, environ: dict | None = None) -> dict[str, str]:
    """The environment variables of `role` that `environ` (default os.environ) does not set already."""
    environ = os.environ if environ is None else environ
    if role not in WAIT_POLICY:
        raise ValueError(f"role={role!r} must be one of {sorted(WAIT_POLICY)}")
    return {} if "OMP_WAIT_POLICY" in environ else {"OMP_WAIT_POLICY": WAIT_POLICY[role]}


def set_threads(role: str) -> None:
    """Set `role`'s OpenMP waiting in this process, before torch loads; a warning when torch has loaded already
    (the setting would not take effect)."""
    wanted = thread_env(role)
    if wanted and "torch" in sys.modules:
        warnings.warn(f"torch was imported before distillspec set OMP_WAIT_POLICY={wanted['OMP_WAIT_POLICY']} for "
                      f"{role}; it keeps OpenMP's default. Import distillspec's entry point first, or set "
                      "OMP_WAIT_POLICY yourself.", RuntimeWarning, stacklevel=2)
        return
    os.environ.update(wanted)


__all__ = ["WAIT_POLICY", "set_threads", "thread_env"]
