"""Token-level divergences between teacher and student next-token distributions, memory-bounded.

Conventions (TRL's generalized JSD): beta=0 is FKL = KL(teacher || student), beta=1 is RKL = KL(student ||
teacher), 0 < beta < 1 is beta * KL(teacher || m) + (1 - beta) * KL(student || m), m = beta * teacher +
(1 - beta) * student. TVD = 0.5 * sum |p - q| (DistillSpec), and 1 - TVD is the SD acceptance probability.
LK-alpha (`lk_alpha`, Samarin et al. 2026, "LK losses"; `nla` in vllm-project/speculators) is the negative log of that
acceptance probability, -log sum_x min(p(x), q(x)): it targets acceptance directly, and unlike TVD its gradient does
not vanish where the two distributions hardly overlap. Temperature divides both models' logits. Means are over completion tokens only (the mask).

`chunked_distill_loss` projects hidden states through the LM heads for the masked positions only, a chunk of
positions at a time under activation checkpointing, so peak memory is O(chunk x vocab), not O(B x T x vocab).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import require

DIVERGENCES = ("fkl", "rkl", "jsd", "tvd", "lk_alpha")


def check_divergence(divergence: str, beta: float | None = None) -> None:
    require(
        divergence in DIVERGENCES,
        f"Unknown divergence '{divergence}'; choose one of {', '.join(DIVERGENCES)} (jsd takes beta in [0, 1]; "
        f"lk_alpha is -log of the expected acceptance).",
    )
    if beta is not None:
        require(0.0 <= beta <= 1.0, f"beta={beta} must be in [0, 1] (0 = FKL, 0.5 = JSD, 1 = RKL).")


def generalized_jsd(s_logp: torch.Tensor, t_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-position generalized JSD [N] from log-probs [N, V] (TRL convention; endpoints are the KLs)."""
    s_p, t_p = s_logp.exp(), t_logp.exp()
    if beta == 0.0:
        return (t_p * (t_logp - s_logp)).sum(-1)
    if beta == 1.0:
        return (s_p * (s_logp - t_logp)).sum(-1)
    m_logp = torch.logsumexp(torch.stack([s_logp + torch.log1p(torch.tensor(-beta)), t_logp + torch.log(
        torch.tensor(beta))]), dim=0)
    kl_t = (t_p * (t_logp - m_logp)).sum(-1)
    kl_s = (s_p * (s_logp - m_logp)).sum(-1)
    return beta * kl_t + (1 - beta) * kl_s


def log_acceptance(s_logp: torch.Tensor, t_logp: torch.Tensor) -> torch.Tensor:
    """Per-position log sum_x min(p, q) [N] from log-probs [N, V], taken in log space (logsumexp of the pointwise
    minimum) so it stays finite, with a useful gradient, when p and q hardly overlap."""
    return torch.logsumexp(torch.minimum(s_logp, t_logp), dim=-1)


def token_divergence(student_logits, teacher_logits, divergence: str, beta: float = 0.5,
                     temperature: float = 1.0) -> torch.Tensor:
    """Per-position divergence [N] between logits [N, V] (float32 math)."""
    s_logp = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t_logp = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    if divergence == "tvd":
        return 0.5 * (s_logp.exp() - t_logp.exp()).abs().sum(-1)
    if divergence == "lk_alpha":
        return -log_acceptance(s_logp, t_logp)
    return generalized_jsd(s_logp, t_logp, {"fkl": 0.0, "rkl": 1.0, "jsd": beta}[divergence])


@dataclass(frozen=True)
class AdaptiveBeta:
    """Entropy-adaptive divergence (the reference study's future work), per token:

        w = clamp((H_teacher - h_low) / (h_high - h_low), 0, 1)
        loss = (1 - w) * D_low + w * D_high

    with H_teacher the teacher's entropy in nats at the loss temperature. Default: RKL (mode-seeking) where the
    teacher is confident, JSD(0.5) where it is uncertain, blended linearly in between.
    """

    h_low: float = 0.5
    h_high: float = 3.0
    low: str = "rkl"
    high: str = "jsd"
    high_beta: float = 0.5

    def __post_init__(self):
        require(0 <= self.h_low < self.h_high, f"AdaptiveBeta needs 0 <= h_low < h_high, got {self.h_low}, "
                f"{self.h_high}.")
        check_divergence(self.low)
        check_divergence(self.high, self.high_beta)

    def weight(self, teacher_entropy: torch.Tensor) -> torch.Tensor:
        return ((teacher_entropy - self.h_low) / (self.h_high - self.h_low)).clamp(0, 1)


@dataclass
class LossStats:
    """Sums over the masked positions (reduce across batches by adding, divide by n)."""

    loss: torch.Tensor  # scalar, mean over positions (differentiable)
    n: int
    teacher_entropy_sum: float  # nats, temperature 1
    student_entropy_sum: float
    expected_accept_sum: float  # sum over positions of sum_x min(p, q) at temperature 1


def _chunk_terms(s_logits, t_logits, divergence, beta, temperature, adaptive):
    """Per-position loss [c] (differentiable in s_logits) and detached stats [c, 3] for one chunk of logits."""
    width = min(s_logits.shape[-1], t_logits.shape[-1])  # padding rows beyond the shared vocabulary are dropped
    s_logits, t_logits = s_logits[:, :width], t_logits[:, :width].float()
    with torch.no_grad():
        t_logp1 = F.log_softmax(t_logits, -1)
        s_logp1 = F.log_softmax(s_logits.detach().float(), -1)
        stats = torch.stack([-(t_logp1.exp() * t_logp1).sum(-1), -(s_logp1.exp() * s_logp1).sum(-1),
                             torch.minimum(t_logp1.exp(), s_logp1.exp()).sum(-1)], -1)
    if adaptive is None:
        return token_divergence(s_logits, t_logits, divergence, beta, temperature), stats
    with torch.no_grad():
        t_logp = F.log_softmax(t_logits / temperature, -1)
        w = adaptive.weight(-(t_logp.exp() * t_logp).sum(-1))
    low = token_divergence(s_logits, t_logits, adaptive.low, 1.0, temperature)
    high = token_divergence(s_logits, t_logits, adaptive.high, adaptive.high_beta, temperature)
    return (1 - w) * low + w * high, stats


class _FusedHeadDivergence(torch.autograd.Function):
    """Sum of per-position divergences from hidden states, never holding more than one chunk of logits.

    The gradient w.r.t. each chunk's student logits is taken during the forward pass (a small local autograd
    call) and immediately pushed through the head into grads for h_s and W_s, as fused linear cross-entropy
    kernels do; backward only scales them. Same number of matmuls as the naive version, O(chunk x V) memory.
    """

    @staticmethod
    def forward(ctx, h_s, w_s, h_t, w_t, options):
        divergence, beta, temperature, adaptive, chunk_size = options
        n = h_s.shape[0]
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.zeros(h_s.shape, dtype=torch.float32, device=h_s.device) if need_h else None
        grad_w = torch.zeros(w_s.shape, dtype=torch.float32, device=w_s.device) if need_w else None
        total = torch.zeros((), dtype=torch.float32, device=h_s.device)
        stats = torch.zeros(3, dtype=torch.float32, device=h_s.device)
        # Logits in fp32 whatever the weights' dtype or an enclosing bf16 autocast (as TRL): bf16 logits would
        # put ~1% noise on every probability the divergence compares.
        w_s32, w_t32 = w_s.detach().float(), w_t.detach().float()  # [V_s, H_s], [V_t, H_t]
        with torch.autocast(h_s.device.type, enabled=False):
            for start in range(0, n, chunk_size):
                hs = h_s[start : start + chunk_size].detach().float()  # [c, H_s]
                with torch.no_grad():
                    t_logits = h_t[start : start + chunk_size].float() @ w_t32.T  # [c, V_t]
                with torch.enable_grad():
                    s_logits = (hs @ w_s32.T).requires_grad_(True)  # [c, V_s]
                    per_pos, chunk_stats = _chunk_terms(s_logits, t_logits, divergence, beta, temperature, adaptive)
                    chunk_loss = per_pos.sum()
                    (g,) = torch.autograd.grad(chunk_loss, s_logits) if (need_h or need_w) else (None,)
                total += chunk_loss.detach()
                stats += chunk_stats.sum(0)
                if g is not None:
                    if need_h:
                        grad_h[start : start + chunk_size] = g @ w_s32
                    if need_w:
                        grad_w += g.T @ hs
        grad_h = grad_h.to(h_s.dtype) if need_h else None
        grad_w = grad_w.to(w_s.dtype) if need_w else None
        ctx.save_for_backward(*(t for t in (grad_h, grad_w) if t is not None))
        ctx.has = (need_h, need_w)
        ctx.mark_non_differentiable(stats)
        return total, stats

    @staticmethod
    def backward(ctx, grad_total, grad_stats):
        saved = list(ctx.saved_tensors)
        grad_h = saved.pop(0) * grad_total if ctx.has[0] else None
        grad_w = saved.pop(0) * grad_total if ctx.has[1] else None
        return grad_h, grad_w, None, None, None


def chunked_distill_loss(
    student_hidden: torch.Tensor,  # [B, T, H_s], aligned so position t predicts token t+1
    teacher_hidden: torch.Tensor,  # [B, T, H_t]
    student_head: torch.Tensor,  # [V_s, H_s] lm_head weight
    teacher_head: torch.Tensor,  # [V_t, H_t]
    mask: torch.Tensor,  # [B, T], 1 where the loss applies (completion tokens)
    *,
    divergence: str = "jsd",
    beta: float = 0.5,
    temperature: float = 1.0,
    adaptive: AdaptiveBeta | None = None,
    chunk_size: int = 256,
) -> LossStats:
    """Masked mean of the token divergence, projecting only the masked positions, one chunk at a time."""
    check_divergence(divergence, beta)
    require(temperature > 0, f"temperature={temperature} must be > 0.")
    valid = mask.reshape(-1).bool()
    h_s = student_hidden.reshape(-1, student_hidden.shape[-1])[valid]  # [N, H_s]
    h_t = teacher_hidden.reshape(-1, teacher_hidden.shape[-1])[valid].detach()  # [N, H_t]
    n = int(h_s.shape[0])
    if n == 0:
        return LossStats(student_hidden.sum() * 0.0, 0, 0.0, 0.0, 0.0)
    options = (divergence, beta, temperature, adaptive, chunk_size)
    total, stats = _FusedHeadDivergence.apply(h_s, student_head, h_t, teacher_head.detach(), options)
    return LossStats(total / n, n, *stats.tolist())


def naive_distill_loss(student_logits, teacher_logits, mask, *, divergence="jsd", beta=0.5, temperature=1.0):
    """Reference: full [B, T, V] logits, then the masked mean (what the chunked version must equal)."""
    per_pos = token_divergence(student_logits.reshape(-1, student_logits.shape[-1]),
                               teacher_logits.reshape(-1, teacher_logits.shape[-1]), divergence, beta, temperature)
    valid = mask.reshape(-1).float()
    return (per_pos * valid).sum() / valid.sum().clamp_min(1)
