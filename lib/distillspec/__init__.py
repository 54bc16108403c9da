"""distillspec: on-policy distillation of draft models for speculative decoding, and batched SD evaluation."""

from .errors import DistillSpecError
from .models import check_compatible, draft_from_teacher, load_model, load_tokenizer

__all__ = ["DistillSpecError", "check_compatible", "draft_from_teacher", "load_model", "load_tokenizer"]
__version__ = "0.1.0"
