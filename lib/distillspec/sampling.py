"""Sampling settings and the warp from logits to the distribution a token is drawn from (shared by p and q)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from .errors import DistillSpecError, require


@dataclass(frozen=True)
class SamplingConfig:
    """greedy=True picks the argmax (one-hot distribution); otherwise temperature, then top-k, then top-p."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    greedy: bool = False

    def __post_init__(self):
        if self.greedy:
            return
        require(
            self.temperature > 0,
            f"temperature={self.temperature} must be > 0 when sampling; use SamplingConfig(greedy=True) "
            "for greedy decoding.",
        )
        require(0 < self.top_p <= 1, f"top_p={self.top_p} must be in (0, 1]; use 1.0 to disable nucleus sampling.")
        require(
            isinstance(self.top_k, int) and self.top_k >= 0, f"top_k={self.top_k} must be an int >= 0 (0 = off)."
        )

    def warpers(self) -> list:
        """The transformers logits warpers, in the order generate() applies them."""
        out = []
        if self.temperature != 1.0:
            out.append(TemperatureLogitsWarper(self.temperature))
        if self.top_k > 0:
            out.append(TopKLogitsWarper(self.top_k))
        if self.top_p < 1.0:
            out.append(TopPLogitsWarper(self.top_p))
        return out

    def generate_kwargs(self) -> dict:
        """The same sampling as transformers `generate` arguments (for target-only and rollout baselines)."""
        if self.greedy:
            return {"do_sample": False}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k}

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [..., V] -> the distribution tokens are sampled from [..., V] (one-hot argmax when greedy).
        Nucleus sampling alone (top_p < 1, no top-k) takes the fast path of `nucleus_probs`."""
        if self.greedy:
            return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)
        flat = logits.reshape(-1, logits.shape[-1])
        if self.top_p < 1.0 and self.top_k == 0:
            return nucleus_probs(flat / self.temperature, self.top_p).reshape(logits.shape)
        return _warped_probs(flat, self.warpers()).reshape(logits.shape)


NUCLEUS_CANDIDATES = 256  # the top tokens in which nucleus_probs looks for the nucleus before sorting the vocabulary


def _warped_probs(flat: torch.Tensor, warpers: list) -> torch.Tensor:
    """softmax after transformers' warpers, applied in order to logits [N, V]."""
    for warper in warpers:
        flat = warper(None, flat)
    return torch.softmax(flat, dim=-1)


def nucleus_probs(scaled: torch.Tensor, top_p: float) -> torch.Tensor:
    """The top-p distribution of temperature-scaled logits [N, V], the set transformers' TopPLogitsWarper keeps:
    every token whose higher-ranked tokens hold less than top_p of the mass (the top one always). That warper sorts
    the whole vocabulary for every row (4 ms per row of 49,152 on one CPU core, more than the softmax and the
    draft's forward together); the nucleus almost always lies among the top NUCLEUS_CANDIDATES tokens, found with
    topk, so rows whose candidates hold top_p of the mass are done there and only the others go through the warper
    itself. The kept set can differ from the warper's only where a token's mass above it is within float rounding
    of top_p."""
    probs = torch.softmax(scaled, dim=-1)  # [N, V]
    k = min(NUCLEUS_CANDIDATES, probs.shape[-1])
    top, ids = probs.topk(k, dim=-1)  # [N, k], descending
    above = top.double().cumsum(-1) - top.double()  # [N, k]: the mass of the tokens ranked above each
    keep = above < top_p
    found = keep[:, -1].logical_not()  # the nucleus ends inside the candidates
    kept = torch.where(keep, top, torch.zeros_like(top))
    out = torch.zeros_like(probs).scatter_(-1, ids, kept / kept.sum(-1, keepdim=True))
    if not bool(found.all()):  # a flat row: its nucleus is wider than the candidates
        rest = ~found
        out[rest] = _warped_probs(scaled[rest], [TopPLogitsWarper(top_p)])
    return out


GREEDY = SamplingConfig(greedy=True)


def as_sampling(sampling) -> SamplingConfig:
    """Accept a SamplingConfig, 'greedy', or a dict of SamplingConfig fields."""
    if isinstance(sampling, SamplingConfig):
        return sampling
    if sampling == "greedy":
        return GREEDY
    if isinstance(sampling, dict):
        unknown = set(sampling) - set(SamplingConfig.__dataclass_fields__)
        require(not unknown, f"Unknown sampling options {sorted(unknown)}; use temperature, top_p, top_k, greedy.")
        return SamplingConfig(**sampling)
    raise DistillSpecError(
        f"sampling={sampling!r} is not understood: pass 'greedy', a dict like {{'temperature': 0.6, 'top_p': 0.95}}, "
        "or a SamplingConfig."
    )


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats over the last axis (0 log 0 = 0)."""
    return -(probs * torch.log(probs.clamp_min(1e-30))).sum(-1)


def sample(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row of probs [N, V] (unnormalised is fine) -> [N], by inverse CDF: one uniform per row,
    so it is fast on CPU (multinomial and exponential races draw V numbers per row)."""
    cdf = probs.cumsum(-1)  # [N, V]
    u = torch.rand(probs.shape[0], 1, device=probs.device, generator=generator) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp(max=probs.shape[-1] - 1)
