"""Acceptance rules: how the target judges a drafted token, and what it samples instead on rejection.

A rule is any callable (tokens [N], p [N, V], q [N, V], u [N]) -> (accept [N] bool, residual [N, V]):
p, q are the (warped) target and draft distributions at the drafted positions, u are U(0, 1) draws supplied
by the decoder (so every rule consumes the same randomness), and residual is the unnormalised distribution the
replacement token is drawn from when that position is the first rejection. The decoder does the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import require

LENIENCE_KINDS = ("lin", "sq", "exp")


@dataclass(frozen=True)
class RejectionSampling:
    """Speculative sampling (Leviathan et al.; Chen et al.): accept x with prob min(1, f(p(x)) / q(x)).

    lenience=None is lossless (f(p) = p): the output follows the target distribution exactly. DistillSpec's lossy
    variants relax it with eps in (0, 1]: 'lin' f(p) = p/eps, 'sq' f(p) = p/eps^2, 'exp' f(p) = p^eps. Either way a
    rejected position is resampled from norm(max(0, p - q)).
    """

    lenience: str | None = None
    eps: float = 1.0

    def __post_init__(self):
        require(
            self.lenience is None or self.lenience in LENIENCE_KINDS,
            f"Unknown lenience '{self.lenience}'; use None (lossless) or one of {LENIENCE_KINDS}.",
        )
        require(0 < self.eps <= 1, f"Lenience eps={self.eps} must be in (0, 1]; eps=1 is lossless.")

    def lenient(self, p_x: torch.Tensor) -> torch.Tensor:
        if self.lenience == "lin":
            return p_x / self.eps
        if self.lenience == "sq":
            return p_x / self.eps**2
        if self.lenience == "exp":
            return p_x**self.eps
        return p_x

    def __call__(self, tokens, p, q, u):
        p_x = p.gather(-1, tokens[:, None]).squeeze(-1)
        q_x = q.gather(-1, tokens[:, None]).squeeze(-1)
        accept = u * q_x < self.lenient(p_x)  # u < f(p)/q without dividing by q
        residual = (p - q).clamp_min(0)
        empty = residual.sum(-1, keepdim=True) <= 0  # p == q numerically: nothing left but p itself
        return accept, torch.where(empty, p, residual)


@dataclass(frozen=True)
class TopKAcceptance:
    """SKD (Xu et al. 2024): keep a drafted token iff it is in the target's top-k; otherwise sample from p.

    Not distribution-preserving: this is for distillation rollouts, not for lossless decoding.
    """

    k: int = 25

    def __post_init__(self):
        require(isinstance(self.k, int) and self.k >= 1, f"SKD top-k must be an int >= 1, got {self.k}.")

    def __call__(self, tokens, p, q, u):
        k = min(self.k, p.shape[-1])
        kth = p.topk(k, dim=-1).values[:, -1]
        p_x = p.gather(-1, tokens[:, None]).squeeze(-1)
        return (p_x >= kth) & (p_x > 0), p


@dataclass(frozen=True)
class GreedyLenience:
    """Accept a drafted token x when the target ranks it close to its favourite: p1(x) >= l * max p1 on the target's
    untempered (T=1) distribution; on rejection sample from p. l=1 keeps only the target's argmax; smaller l
    accepts more. Lossy, like lenient rejection sampling, but it reads the target's ranking rather than the draft's q.

    The decoder hands the rule the warped p (temperature T, then top-p); inside the nucleus p(x) / max p =
    (p1(x) / max p1)^(1/T), so the test runs on p with the threshold l^(1/T); a token outside the nucleus is
    rejected (the decoder would never sample it)."""

    lenience: float = 1.0
    temperature: float = 1.0

    def __post_init__(self):
        require(0 < self.lenience <= 1, f"Greedy lenience l={self.lenience} must be in (0, 1]; l=1 accepts only the "
                "target's argmax.")
        require(self.temperature > 0, f"temperature={self.temperature} must be > 0: pass the decoding temperature.")

    def __call__(self, tokens, p, q, u):
        p_x = p.gather(-1, tokens[:, None]).squeeze(-1)
        threshold = self.lenience ** (1 / self.temperature) * p.max(-1).values
        return (p_x >= threshold) & (p_x > 0), p


ACCEPTANCE_RULES = (RejectionSampling, TopKAcceptance, GreedyLenience)  # what speculative_generate(acceptance=...) takes
