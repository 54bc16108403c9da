"""Silence third-party output that says nothing about a study. Called by the entry points (the command line and
each notebook's preamble), never at import: importing distillspec leaves a program's warnings, logging and progress
bars as they were."""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager


def quiet_library_output() -> None:
    """Turn off progress bars and import-time notices that are not the study's (transformers' "Loading weights" and
    "Writing model shards" bars, datasets' map/filter bars, bitsandbytes' note that an optional CPU kernel is
    missing: distillspec never runs bitsandbytes on a CPU); distillspec's own bars (drafts, SD batches) stay."""
    import datasets
    from transformers.utils import logging as hf_logging

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()


@contextmanager
def quiet_bitsandbytes_import():
    """While importing a package that imports bitsandbytes (peft, TRL): its note that an optional CPU kernel package
    is missing is hidden; distillspec never runs bitsandbytes on a CPU (teacher_8bit is CUDA only). The logger's
    level is put back afterwards."""
    logger = logging.getLogger("bitsandbytes")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _not_mtime_notice(record: logging.LogRecord) -> bool:
    return "mtime may not be reliable" not in record.getMessage()


def _not_tied_head_notice(record: logging.LogRecord) -> bool:
    """Loading the best checkpoint names lm_head.weight as missing: a tied head is not saved, and it is the
    embedding's own tensor, which the load fills."""
    return "missing keys in the checkpoint model loaded: ['lm_head.weight']" not in record.getMessage()


@contextmanager
def quiet_trainer_noise():
    """While training: TRL reads transformers' deprecated `is_gradient_checkpointing` alias before every rollout
    (a FutureWarning about TRL's code, once per step), and transformers warns whenever two checkpoints were saved
    within a second (then orders them by step, as intended), and names a tied LM head "missing" when it loads the
    best checkpoint. All are hidden inside this block only."""
    trainer_utils = logging.getLogger("transformers.trainer_utils")
    trainer_utils.addFilter(_not_mtime_notice)
    trainer = logging.getLogger("transformers.trainer")
    trainer.addFilter(_not_tied_head_notice)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated",
                                    category=FutureWarning)
            yield
    finally:
        trainer_utils.removeFilter(_not_mtime_notice)
        trainer.removeFilter(_not_tied_head_notice)


__all__ = ["quiet_bitsandbytes_import", "quiet_library_output", "quiet_trainer_noise"]
