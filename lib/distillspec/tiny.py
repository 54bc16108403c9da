"""Tiny random-init Llama- and Qwen3-style models for fast offline tests (real SmolLM2 vocabulary by default)."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config

SMOLLM2_VOCAB = 49152


def tiny_config(kind: str = "llama", *, vocab_size: int = SMOLLM2_VOCAB, hidden_size: int = 16, num_layers: int = 2,
                init_std: float = 0.02, eos_token_id: int = 2, max_positions: int = 2048):
    """Config of a model with a few hundred thousand parameters (almost all of them in the tied embedding)."""
    common = dict(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=2, num_key_value_heads=1, head_dim=hidden_size // 2,
        max_position_embeddings=max_positions, tie_word_embeddings=True, initializer_range=init_std,
        bos_token_id=1, eos_token_id=eos_token_id, pad_token_id=eos_token_id,
    )
    if kind == "llama":
        return LlamaConfig(**common)
    if kind == "qwen3":
        return Qwen3Config(**common)
    raise ValueError(f"Unknown tiny model kind '{kind}'; use 'llama' or 'qwen3'.")


def tiny_model(kind: str = "llama", *, seed: int = 0, **config_kwargs):
    """A random-init causal LM in eval mode, deterministic in seed."""
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(kind, **config_kwargs), dtype=torch.float32).eval()


def perturbed_copy(model, noise: float, *, seed: int = 0):
    """A copy of `model` with Gaussian noise (relative std `noise`) on every weight: a draft that agrees with
    the target often but not always, so tests exercise partial acceptance."""
    import copy

    clone = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in clone.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * noise * param.std())
    return clone.eval()
