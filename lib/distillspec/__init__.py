"""distillspec: on-policy distillation of draft models for speculative decoding, and batched SD evaluation.

The public API, loaded on first use (importing the package loads neither torch nor TRL, and changes no warning
filter, logging level or progress bar):

    speculative_generate, SpecDecResult   the batched SD decoder (specdec.py)
    distill, Config                       one training run of a draft (distillation.py, config.py)
    EagleHead, load_head, train_head      feature heads over the target (eagle.py, head_training.py)
    load_model, load_pair                 a model by hub id, folder, GGUF alias or tiny-*; a (target, draft) pair
"""

from importlib import import_module

_API = {
    "speculative_generate": "specdec", "SpecDecResult": "specdec",
    "distill": "distillation", "Config": "config",
    "load_model": "models", "load_tokenizer": "models", "draft_from_teacher": "models",
    "check_compatible": "models", "load_pair": "drafts", "DistillSpecError": "errors",
    "EagleHead": "eagle", "load_head": "eagle", "train_head": "head_training",
}

__all__ = sorted(_API)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'distillspec' has no attribute {name!r}")
    value = getattr(import_module(f".{_API[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_API))
