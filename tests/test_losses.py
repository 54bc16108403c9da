import pytest
import torch

from distillspec import DistillSpecError
from distillspec.losses import (
    AdaptiveBeta,
    chunked_distill_loss,
    naive_distill_loss,
    token_divergence,
)


def _brute(s_logits, t_logits, divergence, beta, temperature):
    """float64 textbook formulas, one position at a time."""
    out = []
    for s, t in zip(s_logits.double(), t_logits.double()):
        q = torch.softmax(s / temperature, -1)  # student
        p = torch.softmax(t / temperature, -1)  # teacher
        if divergence == "fkl":
            out.append((p * (p / q).log()).sum())
        elif divergence == "rkl":
            out.append((q * (q / p).log()).sum())
        elif divergence == "tvd":
            out.append(0.5 * (p - q).abs().sum())
        elif divergence == "lk_alpha":
            out.append(-torch.minimum(p, q).sum().log())
        else:
            m = beta * p + (1 - beta) * q
            out.append(beta * (p * (p / m).log()).sum() + (1 - beta) * (q * (q / m).log()).sum())
    return torch.stack(out)


CASES = [("fkl", 0.5), ("rkl", 0.5), ("jsd", 0.5), ("jsd", 0.1), ("jsd", 0.9), ("tvd", 0.5), ("lk_alpha", 0.5)]


@pytest.mark.parametrize("divergence,beta", CASES)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_divergence_and_gradient_match_float64_brute_force(divergence, beta, temperature):
    gen = torch.Generator().manual_seed(0)
    s = (torch.randn(6, 50, generator=gen) * 2).requires_grad_(True)
    t = torch.randn(6, 50, generator=gen) * 2
    ours = token_divergence(s, t, divergence, beta, temperature)
    s64 = s.detach().double().requires_grad_(True)
    ref = _brute(s64, t, divergence, beta, temperature)
    torch.testing.assert_close(ours.double(), ref.detach(), rtol=1e-5, atol=1e-6)
    (g_ours,) = torch.autograd.grad(ours.sum(), s)
    (g_ref,) = torch.autograd.grad(ref.sum(), s64)
    torch.testing.assert_close(g_ours.double(), g_ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_agrees_with_trl_generalized_jsd(beta):
    from trl.experimental.gkd import GKDTrainer

    gen = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 5, 40, generator=gen), torch.randn(2, 5, 40, generator=gen)
    labels = torch.zeros(2, 5, dtype=torch.long)
    labels[0, :2] = -100
    trl = GKDTrainer.generalized_jsd_loss(s, t, labels=labels, beta=beta, temperature=0.8)
    ours = naive_distill_loss(s, t, labels != -100, divergence="jsd", beta=beta, temperature=0.8)
    torch.testing.assert_close(ours, trl, rtol=1e-5, atol=1e-6)


def test_known_values():
    x = torch.randn(4, 30)
    for divergence in ("fkl", "rkl", "jsd", "tvd", "lk_alpha"):
        assert token_divergence(x, x, divergence).abs().max() < 1e-6
    s, t = torch.randn(4, 30), torch.randn(4, 30)
    p, q = torch.softmax(t, -1), torch.softmax(s, -1)
    torch.testing.assert_close(token_divergence(s, t, "tvd"), 1 - torch.minimum(p, q).sum(-1))
    torch.testing.assert_close(token_divergence(s, t, "lk_alpha"), -(1 - token_divergence(s, t, "tvd")).log())


def test_lk_alpha_where_teacher_and_student_do_not_overlap():
    """Teacher and student sure of different tokens: acceptance ~1e-26, far below what sum(min(p, q)) resolves in
    float32 beside 1. LK-alpha stays finite, matches float64, and its gradient moves the student toward the
    teacher's token, where TVD's gradient has all but vanished."""
    t = torch.full((1, 8), -30.0)
    t[0, 0] = 30.0  # teacher: token 0
    s = torch.full((1, 8), -30.0)
    s[0, 1] = 30.0  # student: token 1
    s.requires_grad_(True)
    loss = token_divergence(s, t, "lk_alpha")
    s64 = s.detach().double().requires_grad_(True)
    ref = _brute(s64, t, "lk_alpha", 0.5, 1.0)
    assert torch.isfinite(loss).all() and loss.item() > 50
    torch.testing.assert_close(loss.double(), ref.detach(), rtol=1e-5, atol=1e-4)
    (g,) = torch.autograd.grad(loss.sum(), s)
    (g_ref,) = torch.autograd.grad(ref.sum(), s64)
    assert torch.isfinite(g).all()
    torch.testing.assert_close(g.double(), g_ref, rtol=1e-4, atol=1e-6)
    assert g[0, 0] < -0.1 and g[0, 1] > 0.1  # descent raises the teacher's token and lowers the student's own
    s_tvd = s.detach().requires_grad_(True)
    (g_tvd,) = torch.autograd.grad(token_divergence(s_tvd, t, "tvd").sum(), s_tvd)
    assert g_tvd.abs().max() < 1e-6 < g.abs().max()
    # a fully disjoint pair (-inf logits) is +inf, never NaN
    t_inf, s_inf = torch.tensor([[0.0, -float("inf")]]), torch.tensor([[-float("inf"), 0.0]])
    assert token_divergence(s_inf, t_inf, "lk_alpha").item() == float("inf")


@pytest.mark.parametrize("divergence,beta", CASES)
def test_chunked_equals_naive_with_gradients(divergence, beta):
    gen = torch.Generator().manual_seed(2)
    B, T, H, Ht, V = 3, 7, 8, 12, 64
    h_s = torch.randn(B, T, H, generator=gen, requires_grad=True)
    w_s = torch.randn(V, H, generator=gen, requires_grad=True)
    h_t, w_t = torch.randn(B, T, Ht, generator=gen), torch.randn(V + 5, Ht, generator=gen)  # padded teacher head
    mask = torch.rand(B, T, generator=gen) > 0.3
    stats = chunked_distill_loss(h_s, h_t, w_s, w_t, mask, divergence=divergence, beta=beta, temperature=0.9,
                                 chunk_size=4)
    naive = naive_distill_loss(h_s @ w_s.T, (h_t @ w_t.T)[..., :V], mask, divergence=divergence, beta=beta,
                               temperature=0.9)
    torch.testing.assert_close(stats.loss, naive)
    assert stats.n == int(mask.sum())
    g_chunk = torch.autograd.grad(stats.loss, (h_s, w_s))
    h_s2, w_s2 = h_s.detach().requires_grad_(True), w_s.detach().requires_grad_(True)
    naive2 = naive_distill_loss(h_s2 @ w_s2.T, (h_t @ w_t.T)[..., :V], mask, divergence=divergence, beta=beta,
                                temperature=0.9)
    g_naive = torch.autograd.grad(naive2, (h_s2, w_s2))
    for a, b in zip(g_chunk, g_naive):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # logged stats: expected acceptance is sum min(p, q) at T=1 over masked positions
    p = torch.softmax((h_t @ w_t.T)[..., :V], -1)[mask]
    q = torch.softmax(h_s.detach() @ w_s.detach().T, -1)[mask]
    assert stats.expected_accept_sum == pytest.approx(torch.minimum(p, q).sum().item(), rel=1e-4)


def test_adaptive_blend_hits_its_endpoints():
    ada = AdaptiveBeta(h_low=1.0, h_high=2.0, low="rkl", high="fkl")
    assert ada.weight(torch.tensor([0.5, 1.5, 3.0])).tolist() == [0.0, 0.5, 1.0]
    gen = torch.Generator().manual_seed(3)
    h_s, w_s = torch.randn(1, 4, 8, generator=gen), torch.randn(32, 8, generator=gen)
    mask = torch.ones(1, 4, dtype=torch.bool)
    confident = torch.zeros(32, 8)
    confident[0] = 50.0  # teacher puts all mass on token 0: entropy ~ 0 -> pure RKL
    h_t = torch.ones(1, 4, 8)
    got = chunked_distill_loss(h_s, h_t, w_s, confident, mask, adaptive=ada).loss
    want = chunked_distill_loss(h_s, h_t, w_s, confident, mask, divergence="rkl").loss
    torch.testing.assert_close(got, want)
    flat = torch.zeros(32, 8)  # uniform teacher: entropy log 32 = 3.47 > h_high -> pure FKL
    got = chunked_distill_loss(h_s, h_t, w_s, flat, mask, adaptive=ada).loss
    torch.testing.assert_close(got, chunked_distill_loss(h_s, h_t, w_s, flat, mask, divergence="fkl").loss)


def test_bad_divergence_inputs():
    x = torch.zeros(1, 2, 4)
    w = torch.zeros(8, 4)
    m = torch.ones(1, 2)
    with pytest.raises(DistillSpecError, match="Unknown divergence 'kl'; choose one of fkl, rkl, jsd, tvd, lk_alpha"):
        chunked_distill_loss(x, x, w, w, m, divergence="kl")
    with pytest.raises(DistillSpecError, match=r"beta=1.5 must be in \[0, 1\]"):
        chunked_distill_loss(x, x, w, w, m, divergence="jsd", beta=1.5)
    with pytest.raises(DistillSpecError, match="h_low < h_high"):
        AdaptiveBeta(h_low=2.0, h_high=1.0)
