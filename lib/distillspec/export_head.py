"""Hand a fused feature head (eagle.py, `head_features: fused`) to vLLM in the layout of vllm-project/speculators'
`eagle3` model: config.json (speculators_model_type eagle3, the layer's config, the target layers it reads) and
model.safetensors, with the head's reduced vocabulary as speculators' draft vocabulary (d2t, t2d).

A head shares its target's embedding, final norm and LM head; the export writes the norm and the LM head's rows for
the head's vocabulary (speculators' `norm`, `lm_head`) and leaves the embedding to the target, as EAGLE-3
checkpoints do. `python benchmarks/check_speculators_export.py` (make check-speculators) loads an export with
speculators and compares its draft logits with the head's."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .atomic import write_dir, write_text
from .eagle import _decoder, load_head, read_head_meta
from .errors import require

USAGE_TITLE = "# Draft model for"  # USAGE.md's first line (every export): marks a folder as an earlier export
SPECULATORS_VERSION = "0.9.0"  # the speculators release whose loader the check runs (make check-speculators)


def head_vocab(head_dir: Path) -> list[int] | None:
    """The reduced vocabulary the head was trained and evaluated with: its study's data/draft_vocab.json
    (runs/<preset>/drafts/<run>/student -> runs/<preset>/data), or None (the full vocabulary)."""
    study = head_dir.parent.parent.parent
    vocab = study / "data" / "draft_vocab.json"
    if head_dir.parent.parent.name == "drafts" and vocab.is_file():
        return json.loads(vocab.read_text())["ids"]
    return None


def speculators_weights(head, vocab: list[int] | None) -> dict[str, torch.Tensor]:
    """The head's weights under speculators' eagle3 names: fc (the fusing projection), layers.0.* (its layer),
    norm and lm_head (its target's final norm and LM head rows), d2t / t2d for a reduced vocabulary."""
    out = {f"layers.0.{k}": v for k, v in head.body.layers[0].state_dict().items()}
    out["fc.weight"] = head.fuse.weight
    out["norm.weight"] = _decoder(head.target).norm.weight
    lm_head = head.get_output_embeddings().weight  # [V, H]
    if vocab is not None:
        ids = torch.tensor(vocab, dtype=torch.long)
        out["lm_head.weight"] = lm_head[ids.to(lm_head.device)]
        out["d2t"] = ids - torch.arange(len(ids))  # draft id i -> target id i + d2t[i]
        t2d = torch.zeros(lm_head.shape[0], dtype=torch.bool)
        t2d[ids] = True
        out["t2d"] = t2d
    else:
        out["lm_head.weight"] = lm_head
    return {k: v.detach().to("cpu").contiguous() for k, v in out.items()}


def speculators_config(head, vocab: list[int] | None, *, verifier: str, architectures: list[str], gamma: int) -> dict:
    """config.json for speculators' Eagle3SpeculatorConfig."""
    layer = head.config.to_dict()
    layer.update(num_hidden_layers=1, vocab_size=head.get_output_embeddings().weight.shape[0])
    for key in ("_name_or_path", "architectures", "transformers_version", "dtype", "torch_dtype"):
        layer.pop(key, None)
    return {
        "speculators_model_type": "eagle3",
        "architectures": ["Eagle3Speculator"],
        "transformer_layer_config": layer,
        "draft_vocab_size": len(vocab) if vocab is not None else layer["vocab_size"],
        "norm_before_residual": False,
        "norm_before_fc": False,
        "fc_norm": False,
        "norm_output": False,
        "target_hidden_size": None,
        "eagle_aux_hidden_state_layer_ids": list(head.feature_layers),
        "embed_requires_grad": False,
        "speculators_version": SPECULATORS_VERSION,
        "torch_dtype": str(head.dtype).removeprefix("torch."),
        "speculators_config": {
            "algorithm": "eagle3",
            "proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": gamma}],
            "default_proposal_method": "greedy",
            "verifier": {"name_or_path": verifier, "architectures": architectures},
        },
    }


def export_head(head_dir: str | os.PathLike, out: Path, *, target: str, gamma: int, gamma_from: str) -> Path:
    """Write the fused head saved in head_dir, for `target` (a name load_model takes), to `out` in speculators'
    eagle3 layout, with USAGE.md; refused for a head that reads its target's top state only."""
    from safetensors.torch import save_file

    from .models import load_model, resolve_model_path

    head_dir = Path(head_dir)
    meta = read_head_meta(head_dir)
    require(meta.get("features", "top") == "fused",
            f"{head_dir} is a feature head that reads its target's top hidden state (head_features: top): no engine "
            "loads that layout (vLLM's EAGLE-1 proposer has no bias in its input projection and no norms around its "
            "layer, and speculators has no EAGLE-1 model). Train the head with head_features: fused (EAGLE-3's "
            "layout) to export it, or use it with distillspec's decoder.")
    model, _ = load_model(target, dtype=torch.float32)
    head = load_head(head_dir, model)
    vocab = head_vocab(head_dir)
    verifier = resolve_model_path(target)
    config = speculators_config(head, vocab, verifier=verifier, gamma=gamma,
                                architectures=list(getattr(model.config, "architectures", None) or
                                                   [type(model).__name__]))

    def write(tmp: Path) -> None:
        save_file(speculators_weights(head, vocab), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=1))

    write_dir(out, write)
    write_text(_usage(out, verifier, gamma, gamma_from, len(vocab) if vocab else None, head.feature_layers),
               out / "USAGE.md")
    return out


def _usage(out: Path, target: str, gamma: int, gamma_from: str, vocab: int | None, layers: tuple) -> str:
    spec = f'{{"method": "eagle3", "model": "{out}", "num_speculative_tokens": {gamma}}}'
    return f"""{USAGE_TITLE} `{target}`

Exported by `python -m distillspec export`: a feature head (EAGLE-3: it reads the target's layers
{', '.join(map(str, layers))}) in the layout of vllm-project/speculators' `eagle3` model, {'its reduced vocabulary of ' + str(vocab) +
' ids as the draft vocabulary' if vocab else 'over the full vocabulary'}. It drafts only beside its own target.
Draft tokens per step: {gamma} ({gamma_from}).

## vLLM

```python
from vllm import LLM, SamplingParams

llm = LLM(model="{target}", speculative_config={spec})
print(llm.generate(["What is 2 + 2?"], SamplingParams(temperature=0.0, max_tokens=128))[0].outputs[0].text)
```

or `vllm serve {target} --speculative-config '{spec}'`.

## speculators

```python
from speculators.models.eagle3 import Eagle3DraftModel

head = Eagle3DraftModel.from_pretrained("{out}")  # its embedding is read from the target (the verifier)
```
"""


__all__ = ["export_head", "head_vocab", "speculators_config", "speculators_weights"]
