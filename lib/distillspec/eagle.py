"""EAGLE-style feature heads: a draft that reads the target's top hidden state instead of running a model of its own.

A head is one decoder layer of the target's architecture over fc([embedding of the next token; a feature]), read out
through the target's own final norm and LM head (frozen and shared: attached, never saved with the head). A feature
is a post-norm top hidden state, the vector the LM head reads: the target's, handed over after each verification,
or the head's own output while it drafts a block. The pairing is EAGLE's: the feature f_t computed at position t
(which predicts token t+1) is consumed together with token t+1, and the head's output there predicts token t+2.

A fused head (`features='fused'`) is EAGLE-3's: it reads the residual stream entering a low, a middle and a high
layer of the target (`fused_layers`), projects the three to one feature (`fuse`, no bias), and its layer takes
[embedding; feature] as they are, normalising each half (its own `hidden_norm` for the feature) before an attention
whose projections read both; the feature is the layer's residual. Its own output before the final norm is the
feature it consumes while it drafts on. This is the layout of vllm-project/speculators' `eagle3` (export.py).

Only the projections and the layer are trained and saved (`save_head`); `load_head` attaches a saved head to its
target and refuses a target other than the one it was trained on. A head may score a reduced vocabulary (the rows
of the target's LM head for the ids the teacher writes), exactly as a cut standalone draft does.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModel

from .errors import DistillSpecError, require
from .forward import final_hidden

HEAD_FILE, WEIGHTS_FILE = "eagle_head.json", "eagle_head.safetensors"
FORMAT = "distillspec-eagle-head"


@dataclass
class HeadOutput:
    logits: torch.Tensor  # [B, k, N] over the head's vocabulary (N = V, or its reduced vocabulary)
    hidden: torch.Tensor  # [B, k, H] what the next drafting step consumes (post-norm; a fused head's: before the norm)
    normed: torch.Tensor  # [B, k, H] post-norm: what the LM head reads


class _Eagle3Input:
    """EAGLE-3's first layer over [embedding; feature] [B, k, 2H]: each half normalised (the layer's input norm for
    the embedding, `hidden_norm` for the feature), attention projections reading both, the feature as residual."""

    def forward(self, hidden_states, attention_mask=None, position_ids=None, past_key_values=None, use_cache=False,
                position_embeddings=None, **kwargs):
        embeds, feature = hidden_states.chunk(2, dim=-1)
        both = torch.cat([self.input_layernorm(embeds), self.hidden_norm(feature)], -1)  # [B, k, 2H]
        attended, _ = self.self_attn(hidden_states=both, attention_mask=attention_mask, position_ids=position_ids,
                                     past_key_values=past_key_values, use_cache=use_cache,
                                     position_embeddings=position_embeddings, **kwargs)
        x = feature + attended
        return x + self.mlp(self.post_attention_layernorm(x))


_EAGLE3_LAYERS: dict[type, type] = {}


def _widen_first_layer(layer: nn.Module, cfg) -> None:
    """Turn a decoder layer of the target's architecture into EAGLE-3's first layer, in place (its parameter names
    stay the architecture's, plus hidden_norm)."""
    attn = layer.self_attn
    for name in ("q_proj", "k_proj", "v_proj"):
        old = getattr(attn, name)
        new = nn.Linear(2 * cfg.hidden_size, old.out_features, bias=old.bias is not None, dtype=old.weight.dtype)
        nn.init.normal_(new.weight, std=cfg.initializer_range)
        if new.bias is not None:
            nn.init.zeros_(new.bias)
        setattr(attn, name, new)
    layer.hidden_norm = copy.deepcopy(layer.input_layernorm)
    base = type(layer)
    layer.__class__ = _EAGLE3_LAYERS.setdefault(base, type(f"Eagle3{base.__name__}", (_Eagle3Input, base), {}))


def fused_layers(num_layers: int) -> tuple[int, int, int]:
    """The target layers whose input a fused head reads: EAGLE-3's low, middle and high layer (2, L // 2, L - 3),
    kept inside a shallow model's layers."""
    last = num_layers - 1
    return min(2, last), min(num_layers // 2, last), max(min(num_layers - 3, last), 0)


def _decoder(target) -> nn.Module:
    decoder = target.get_decoder() if hasattr(target, "get_decoder") else None
    require(decoder is not None and hasattr(decoder, "norm") and hasattr(decoder, "layers"),
            f"A feature head needs a decoder-only target with a final norm and layers (Llama, Qwen, SmolLM); "
            f"{type(target).__name__} has none.")
    return decoder


def target_checksum(target) -> str:
    """sha256 over every parameter of the target (by name, in bf16: a bf16 copy of fp32 weights hashes the same), so
    a head refuses a target with any weight changed, not only one of another shape."""
    import hashlib

    digest = hashlib.sha256()
    for name, param in sorted(target.named_parameters(), key=lambda item: item[0]):
        digest.update(name.encode())
        digest.update(param.detach().to(torch.bfloat16).contiguous().view(torch.int16).cpu().numpy().tobytes())
    return digest.hexdigest()


def _signature(target) -> dict:
    """What a head must match in its target: architecture, widths, and the checksum of all its parameters."""
    cfg = target.config
    return {"model_type": cfg.model_type, "hidden_size": cfg.hidden_size, "vocab_size": cfg.vocab_size,
            "num_hidden_layers": cfg.num_hidden_layers, "parameters_sha256": target_checksum(target)}


def _check_target(saved: dict, target, what: str = "This feature head") -> None:
    """Refuse `target` unless it is the model the head was trained for (saved: the head's signature)."""
    problem = _mismatch(saved, target)
    if problem:
        raise DistillSpecError(f"{what} was trained for another target ({problem}): a head only drafts for the model "
                               "whose hidden states it learned. Load it with its own target, or train a head for "
                               "this one.")


def _mismatch(saved: dict, target) -> str | None:
    cfg = target.config
    for key in ("model_type", "hidden_size", "vocab_size", "num_hidden_layers"):
        if saved.get(key) != getattr(cfg, key):
            return f"{key} {saved.get(key)} in the head, {getattr(cfg, key)} in the target"
    if "parameters_sha256" not in saved:
        return "the head records no checksum of its target's parameters; train it again with this version"
    if saved["parameters_sha256"] != target_checksum(target):
        return "the target's parameters differ from the ones the head was trained with (checksum)"
    return None


class EagleHead(nn.Module):
    """fc([embed(token); feature]) -> one decoder layer -> the target's final norm and LM head; fused: EAGLE-3's
    layout (see the module doc)."""

    reads_target_features = True  # the decoder hands it the target's features (a standalone model reads none)

    def __init__(self, target, *, init_from_layer: int | None = None, signature: dict | None = None,
                 features: str = "top"):
        """A new head for `target`; signature: the target's, when already checked (load_head); features: 'top' (the
        target's top hidden state) or 'fused' (three layers' inputs, projected; see the module doc)."""
        super().__init__()
        cfg = copy.deepcopy(target.config.get_text_config())
        cfg.num_hidden_layers = 1
        if getattr(cfg, "layer_types", None):
            cfg.layer_types = cfg.layer_types[-1:]
        if hasattr(cfg, "quantization_config"):
            del cfg.quantization_config
        hidden = self.hidden_size = cfg.hidden_size
        dtype = target.get_input_embeddings().weight.dtype
        require(features in ("top", "fused"), f"features='{features}' must be 'top' or 'fused'.")
        require(features == "top" or init_from_layer is None, "init_from_layer copies a layer of the target, whose "
                "attention reads one vector a token; a fused head's first layer reads two: start it at random.")
        self.features = features
        # the target's hidden states a fused head reads (indices into its decoder's hidden_states); () for 'top'
        self.feature_layers = fused_layers(target.config.num_hidden_layers) if features == "fused" else ()
        self.fc = nn.Linear(2 * hidden, hidden, bias=True, dtype=dtype) if features == "top" else None
        self.body = AutoModel.from_config(cfg, dtype=dtype)
        self.body.embed_tokens = None  # inputs are fc's output; the target's embedding is read instead
        self.body.norm = nn.Identity()  # the target's final norm is applied after the layer
        self.fuse = None
        if features == "fused":
            self.fuse = nn.Linear(3 * hidden, hidden, bias=False, dtype=dtype)
            _widen_first_layer(self.body.layers[0], cfg)
        self.config = self.body.config
        self.signature = signature if signature is not None else _signature(target)
        self.draft_vocab_ids: torch.Tensor | None = None
        if init_from_layer is not None:  # start the layer as a copy of one of the target's (random init learned
            # faster in a 100-step trial on GSM8K: expected acceptance 0.53 vs 0.35 for a copy of the last layer)
            self.body.layers[0].load_state_dict(_decoder(target).layers[init_from_layer].state_dict())
        object.__setattr__(self, "target", target)  # plain attribute: not a submodule
        self.to(target.device)

    def attach(self, target) -> EagleHead:
        """Read the token embeddings, final norm and LM head of `target` (not registered: never trained or saved);
        refused unless `target` is the head's own (checksum of every parameter)."""
        _check_target(self.signature, target)
        object.__setattr__(self, "target", target)
        return self

    @property
    def device(self) -> torch.device:
        return self.body.layers[0].mlp.down_proj.weight.device

    @property
    def feature_width(self) -> int:
        """Width of the target's features this head reads (3 H when fused)."""
        return self.hidden_size * (3 if self.feature_layers else 1)

    @property
    def dtype(self) -> torch.dtype:
        return self.body.layers[0].mlp.down_proj.weight.dtype

    @property
    def generation_config(self):
        return self.target.generation_config

    def get_input_embeddings(self) -> nn.Module:
        return self.target.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.target.get_output_embeddings()

    def norm(self, hidden: torch.Tensor) -> torch.Tensor:
        return _decoder(self.target).norm(hidden)

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """Post-norm features [..., H] -> logits over the head's vocabulary [..., N] (the target's LM head rows)."""
        weight = self.get_output_embeddings().weight
        if self.draft_vocab_ids is not None:
            weight = weight[self.draft_vocab_ids]
        return nn.functional.linear(hidden, weight)

    def forward(self, input_ids, features, attention_mask=None, position_ids=None, past_key_values=None,
                use_cache=False, logits_to_keep: int = 0) -> HeadOutput:
        """input_ids [B, k] (token t+1), features [B, k, H] (feature f_t: the head's own, or the target's; [B, k, 3H]
        the target's when fused) -> logits and the head's features."""
        embeds = self.get_input_embeddings()(input_ids).to(self.dtype)
        features = features.to(self.dtype)
        if self.fuse is None:
            x = self.fc(torch.cat([embeds, features], -1))  # [B, k, H]
        else:
            if features.shape[-1] == self.fuse.in_features:  # the target's three layers
                features = self.fuse(features)
            x = torch.cat([embeds, features], -1)  # [B, k, 2H]: the first layer normalises each half
        out = self.body(inputs_embeds=x, attention_mask=attention_mask, position_ids=position_ids,
                        past_key_values=past_key_values, use_cache=use_cache)
        normed = self.norm(out.last_hidden_state)  # [B, k, H]
        kept = normed[:, -logits_to_keep:] if logits_to_keep else normed
        return HeadOutput(self.project(kept), normed if self.fuse is None else out.last_hidden_state, normed)

    def reduce_vocab(self, keep_ids) -> EagleHead:
        """Score only these token ids (their rows of the target's LM head); q is 0 elsewhere, decoding stays lossless."""
        ids = sorted({int(i) for i in keep_ids})
        vocab = self.get_output_embeddings().weight.shape[0]
        require(ids and 0 <= ids[0] and ids[-1] < vocab,
                f"A reduced head vocabulary needs ids in [0, {vocab}); got {len(ids)} ids.")
        self.draft_vocab_ids = torch.tensor(ids, device=self.device)
        return self


def target_states(target, input_ids, attention_mask, position_ids=None, past_key_values=None, use_cache=False,
                  layers: tuple[int, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward of the target's decoder: (post-norm top hidden states [B, k, H], the features a head reads: the
    same, or with `layers` the inputs of those layers side by side [B, k, 3H])."""
    _decoder(target)  # refuses a target without a decoder stack
    if not layers:
        hidden = final_hidden(target, input_ids, attention_mask, position_ids, past_key_values, use_cache)
        return hidden, hidden
    base = target.get_base_model() if hasattr(target, "get_base_model") else target
    out = base.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             past_key_values=past_key_values, use_cache=use_cache, output_hidden_states=True)
    return out.last_hidden_state, torch.cat([out.hidden_states[i] for i in layers], -1)


def target_features(target, input_ids, attention_mask, position_ids=None, past_key_values=None, use_cache=False,
                    logits_to_keep: int = 0, layers: tuple[int, ...] = ()):
    """The target's forward split at its LM head: (logits [B, k', V] of the last `logits_to_keep` positions, or all
    when 0, or None when -1; the features a head consumes: post-norm top hidden states [B, k, H], or with `layers`
    (a fused head's feature_layers) the inputs of those layers side by side [B, k, 3H])."""
    hidden, features = target_states(target, input_ids, attention_mask, position_ids, past_key_values, use_cache,
                                     layers)
    if logits_to_keep < 0:
        return None, features
    kept = hidden[:, -logits_to_keep:] if logits_to_keep else hidden
    return target.get_output_embeddings()(kept), features


def save_head(head: EagleHead, directory: str | os.PathLike, *, extra: dict | None = None) -> Path:
    """Write the head's weights and description into `directory`, atomically (a temp dir swapped in)."""
    from safetensors.torch import save_file

    from .atomic import write_dir

    def write(tmp: Path) -> None:
        save_file({k: v.detach().contiguous().cpu() for k, v in head.state_dict().items()}, str(tmp / WEIGHTS_FILE))
        meta = {"format": FORMAT, "dtype": str(head.dtype).removeprefix("torch."), "body_config": head.config.to_dict(),
                "target": head.signature, "features": head.features, **(extra or {})}
        (tmp / HEAD_FILE).write_text(json.dumps(meta, indent=1))

    return write_dir(directory, write)


def read_head_meta(path: str | os.PathLike) -> dict:
    file = Path(path) / HEAD_FILE
    require(file.is_file(), f"{path} holds no feature head ({HEAD_FILE} missing): train one first.")
    meta = json.loads(file.read_text())
    require(meta.get("format") == FORMAT, f"{file} is not a distillspec feature head (format {meta.get('format')!r}).")
    return meta


def load_head(path: str | os.PathLike, target) -> EagleHead:
    """A saved head, attached to `target` and in its dtype; refused when `target` is not the head's target."""
    from safetensors.torch import load_file

    meta = read_head_meta(path)
    _check_target(meta["target"], target, f"The feature head in {path}")
    head = EagleHead(target, signature=meta["target"], features=meta.get("features", "top"))
    weights = Path(path) / WEIGHTS_FILE
    require(weights.is_file(), f"{path} has {HEAD_FILE} but no {WEIGHTS_FILE}: the head was not saved completely.")
    head.load_state_dict(load_file(str(weights)), strict=True)
    return head.to(device=target.device, dtype=target.get_input_embeddings().weight.dtype).eval()


__all__ = ["EagleHead", "HeadOutput", "fused_layers", "load_head", "read_head_meta", "save_head", "target_checksum",
           "target_features", "target_states"]
