"""Hand a trained draft to the engines users serve with: a self-contained Hugging Face checkpoint (full
vocabulary, no distillspec-only config keys) and the snippet that plugs it into transformers or vLLM.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from .atomic import write_text
from .drafts import kind_at
from .errors import DistillSpecError, require
from .export_head import USAGE_TITLE, export_head
from .trainlog import TRAIN_LOG
from .training_settings import CHECKPOINT
from .models import check_compatible, load_tokenizer, logits_width, resolve_model_path, save_pretrained_atomic

ENGINES = ("hf", "vllm")
# vLLM's speculative_config method "draft_model" (a separate small model as proposer) is documented from 0.25.0 on.
VLLM_DRAFT_MODEL_SINCE = "0.25.0"
_CUSTOM_KEYS = ("distillspec_kept_layers", "quantization_config")


def _training_teacher(draft_dir: Path) -> str | None:
    """The teacher named in the draft's training config (<run>/drafts/<name>/config.yaml beside student/)."""
    config = draft_dir.parent / "config.yaml"
    if config.is_file():
        return (yaml.safe_load(config.read_text()) or {}).get("teacher")
    return None


def _study_gamma(draft_dir: Path) -> tuple[int, Path] | None:
    """The gamma of the study that trained the draft (runs/<preset>/config.yaml above drafts/<run>/student), and
    that file."""
    config = draft_dir.parent.parent.parent / "config.yaml"
    if draft_dir.parent.parent.name == "drafts" and config.is_file():
        gamma = (yaml.safe_load(config.read_text()) or {}).get("gamma")
        if isinstance(gamma, int):
            return gamma, config
    return None


def _training_folder(path: Path) -> str | None:
    """What `path` is, when a study or a training run wrote it: 'a run directory' (config.yaml beside drafts/,
    records/ or data/) or 'a training run' (a student/, train log or checkpoints); None otherwise."""
    if not path.is_dir():
        return None
    if (path / "config.yaml").is_file() and any((path / d).is_dir() for d in ("drafts", "records", "data")):
        return "a run directory"
    if (path / "student").is_dir() or (path / TRAIN_LOG).is_file() or (path / CHECKPOINT).is_file() or any(
            path.glob("checkpoint-*")):
        return "a training run"
    return None


def _check_not_training_output(out: Path, draft: Path) -> None:
    """Refuse an --out that is, contains or lies inside the exported draft, a run directory or a training run,
    --force or not: replacing it would delete the work the export is made from."""
    draft = draft.resolve()
    require(not (out == draft or out.is_relative_to(draft) or draft.is_relative_to(out)),
            f"--out {out} {'is' if out == draft else 'contains' if draft.is_relative_to(out) else 'lies inside'} the "
            f"draft it exports ({draft}); pick a folder outside it, e.g. exports/<name>.")
    for folder in (out, *out.parents):
        kind = _training_folder(folder)
        require(kind is None, f"--out {out} {'is' if folder == out else 'lies inside'} {kind} ({folder}); an export "
                              "there could delete training output. Pick a folder outside it, e.g. exports/<name>.")
    if out.is_dir():
        for root, dirs, _ in os.walk(out):
            kind = _training_folder(Path(root))
            require(kind is None, f"--out {out} contains {kind} ({root}); replacing it would delete it. Pick an "
                                  "empty or new folder.")


def _check_out(out: Path, force: bool) -> None:
    """Refuse to replace a non-empty folder that no export wrote (unless force): export never deletes a user's
    files by surprise."""
    if not out.exists():
        return
    require(out.is_dir(), f"--out {out} is a file; give a folder to write the checkpoint into.")
    usage = out / "USAGE.md"
    ours = usage.is_file() and usage.read_text().startswith(USAGE_TITLE)
    require(ours or not any(out.iterdir()) or force,
            f"--out {out} is not empty and holds no earlier export ({', '.join(sorted(p.name for p in out.iterdir())[:4])}"
            "...); exporting would replace it. Pick an empty or new folder, or pass --force to replace it.")


def _usage(out: Path, target: str, gamma: int, engine: str, gamma_from: str) -> str:
    hf = f"""## transformers (assisted generation)

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

target = AutoModelForCausalLM.from_pretrained("{target}")
draft = AutoModelForCausalLM.from_pretrained("{out}")
tok = AutoTokenizer.from_pretrained("{target}")
ids = tok.apply_chat_template([{{"role": "user", "content": "What is 2 + 2?"}}], add_generation_prompt=True,
                              return_tensors="pt", return_dict=True)
out = target.generate(**ids, assistant_model=draft, num_assistant_tokens={gamma},
                      num_assistant_tokens_schedule="constant", max_new_tokens=128, do_sample=False)
print(tok.decode(out[0, ids["input_ids"].shape[1]:]))
```
"""
    vllm = f"""## vLLM (>= {VLLM_DRAFT_MODEL_SINCE}, speculative decoding with a draft model)

```python
from vllm import LLM, SamplingParams

llm = LLM(model="{target}",
          speculative_config={{"method": "draft_model", "model": "{out}", "num_speculative_tokens": {gamma}}})
print(llm.generate(["What is 2 + 2?"], SamplingParams(temperature=0.0, max_tokens=128))[0].outputs[0].text)
```

or `vllm serve {target} --speculative-config '{{"method": "draft_model", "model": "{out}", "num_speculative_tokens": {gamma}}}'`.
"""
    first, second = (vllm, hf) if engine == "vllm" else (hf, vllm)
    return (f"{USAGE_TITLE} `{target}`\n\nExported by `python -m distillspec export`: a plain Hugging Face "
            f"checkpoint (full vocabulary of {target!r}'s tokenizer), usable by any engine that takes a draft "
            f"model. Speculative decoding with it is lossless: outputs follow the target's distribution. Draft "
            f"tokens per step: {gamma} ({gamma_from}).\n\n" + first + "\n" + second)


def export_draft(draft: str | os.PathLike, out: str | os.PathLike, *, engine: str = "hf", target: str | None = None,
                 gamma: int | None = None, force: bool = False) -> Path:
    """Write `draft` (a saved draft directory) to `out` as a self-contained checkpoint plus USAGE.md; return out.
    target: the target the snippet names (default: the teacher of the draft's training config); gamma: draft tokens
    per step in the snippet (default: the gamma of the study that trained it). A non-empty `out` that is not an
    earlier export is refused unless force; one that is, contains or lies inside a run directory, a training run or
the draft, always. Files get the permissions of the user's umask."""
    require(engine in ENGINES, f"--to {engine}: choose one of {', '.join(ENGINES)}.")
    draft, out = Path(draft), Path(out).resolve()
    kind = kind_at(draft)
    require(kind is None or kind.export_refusal is None,
            f"{draft}: {getattr(kind, 'export_refusal', '')}")
    layout = "checkpoint" if kind is None else kind.export_layout
    require(layout == "checkpoint" or engine == "vllm", f"{draft} is exported for vLLM only (speculators' eagle3 "
            "layout; transformers' assisted generation takes standalone drafts): pass --to vllm.")
    if layout == "checkpoint":
        require((draft / "config.json").is_file(), f"{draft} is not a saved draft (no config.json); pass a trained "
                                                   "draft directory such as runs/<name>/drafts/<run>/student.")
        require("draft_vocab_ids" not in json.loads((draft / "config.json").read_text()),
                f"{draft} is a reduced-vocabulary draft (its head scores only some token ids); transformers' and "
                "vLLM's draft models need a full-vocabulary head, so it cannot be exported as a plain checkpoint. "
                "Use it with distillspec's decoder (python -m distillspec eval --draft ...).")
    if gamma is None:
        found = _study_gamma(draft)
        require(found is not None, f"No study config above {draft} says which gamma it was evaluated with: pass "
                                   "--gamma (draft tokens per step for the snippet).")
        gamma, gamma_from = found[0], f"the gamma of {found[1]}"
    else:
        gamma_from = "--gamma"
    require(isinstance(gamma, int) and gamma >= 1, f"gamma={gamma} must be an int >= 1.")
    _check_not_training_output(out, draft)
    _check_out(out, force)
    target = target or _training_teacher(draft)
    require(target is not None, f"No target known for {draft}: pass --target (the model the draft speeds up).")
    if layout == "speculators":
        return export_head(draft, out, target=target, gamma=gamma, gamma_from=gamma_from)
    target_path = resolve_model_path(target)  # an alias becomes the converted local checkpoint engines can load
    model = AutoModelForCausalLM.from_pretrained(draft, dtype="auto")
    tokenizer = AutoTokenizer.from_pretrained(draft)
    for key in _CUSTOM_KEYS:
        if hasattr(model.config, key):
            delattr(model.config, key)
    require(logits_width(model) >= len(tokenizer), f"The draft's output layer has {logits_width(model)} rows but "
            f"its tokenizer has {len(tokenizer)} tokens: it is not a full-vocabulary draft.")
    try:
        target_tok = load_tokenizer(target)
    except DistillSpecError as err:  # e.g. a hub id while offline: export anyway, and say what was not checked
        target_tok = None
        warnings.warn(f"Could not load the tokenizer of {target!r} here, so the draft's vocabulary was not checked "
                      f"against it ({err}).", stacklevel=2)
    if target_tok is not None:
        check_compatible(target_tok, tokenizer)
    save_pretrained_atomic(model.to(torch.device("cpu")), tokenizer, out)
    write_text(_usage(out, target_path, gamma, engine, gamma_from), out / "USAGE.md")
    return out


__all__ = ["ENGINES", "VLLM_DRAFT_MODEL_SINCE", "export_draft"]
