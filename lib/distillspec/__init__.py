"""distillspec: on-policy distillation of draft models for speculative decoding, and batched SD evaluation."""

import logging

# bitsandbytes (imported by peft) warns at import on CPUs with AVX512-BF16 that an optional 4-bit CPU kernel
# package is missing; distillspec never runs bitsandbytes on a CPU (teacher_8bit is CUDA only), so keep it quiet.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

from .errors import DistillSpecError  # noqa: E402
from .models import check_compatible, draft_from_teacher, load_model, load_tokenizer  # noqa: E402

__all__ = ["DistillSpecError", "check_compatible", "draft_from_teacher", "load_model", "load_tokenizer"]
__version__ = "0.1.0"
