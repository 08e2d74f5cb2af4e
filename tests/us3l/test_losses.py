"""SSL losses against hand computations."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from support import hand_losses as hand

from us3l.losses import cosine_distance, info_nce, momentum_nt_xent, nt_xent, unit_mse

# Eq. 2's fixed inputs: N = 3 samples, 2-D outputs of the online network (h) and momentum encoder (k).
H1 = [[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]
H2 = [[2.0, 0.5], [-0.5, 1.0], [1.0, -1.0]]
K1 = [[0.9, 0.3], [0.2, 1.0], [1.0, 0.6]]
K2 = [[1.0, 0.4], [-0.3, 1.0], [0.8, -0.9]]
EQ2_BY_HAND = 1.3188141  # hand_losses.eq2(H1, H2, K1, K2, 0.5), printed by test_eq2_by_hand
QK_BY_HAND = 0.8908342  # hand_losses.qk(H1, H2, K1, K2, 0.5): the query-key form on the same inputs


def test_nt_xent_three_samples_by_hand():
    a = [[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]
    b = [[2.0, 0.5], [-0.5, 1.0], [1.0, -1.0]]
    t = 0.5
    z = [hand.unit(v) for v in a + b]  # anchors 0..5; positive of i is (i + 3) % 6
    total = 0.0
    for i in range(6):
        sims = {j: sum(x * y for x, y in zip(z[i], z[j])) / t for j in range(6) if j != i}
        pos = sims[(i + 3) % 6]
        total += -pos + math.log(sum(math.exp(s) for s in sims.values()))
    expected = total / 6
    got = nt_xent(torch.tensor(a), torch.tensor(b), temperature=t)
    assert abs(got.item() - expected) < 1e-6


def test_eq2_by_hand(capsys):
    """US3L Eq. 2: online and momentum outputs in one NT-Xent, 2N-2 negatives per anchor."""
    expected = hand.eq2(H1, H2, K1, K2, 0.5)
    k1 = torch.tensor(K1, requires_grad=True)
    h1 = torch.tensor(H1, requires_grad=True)
    got = momentum_nt_xent(h1, torch.tensor(H2), k1, torch.tensor(K2), 0.5)
    assert abs(got.item() - expected) < 1e-6 and abs(expected - EQ2_BY_HAND) < 1e-6
    got.backward()
    assert k1.grad is None and h1.grad.abs().sum() > 0  # the momentum side carries no gradient
    old = 0.5 * (info_nce(h1, torch.tensor(K2), 0.5) + info_nce(torch.tensor(H2), k1, 0.5))
    assert abs(old.item() - hand.qk(H1, H2, K1, K2, 0.5)) < 1e-6 and abs(old.item() - QK_BY_HAND) < 1e-6
    with capsys.disabled():
        print(f"\nEq. 2 by hand {expected:.7f}, momentum_nt_xent {got.item():.7f}; "
              f"old query-key form {old.item():.7f}")


def test_eq2_has_more_negatives_than_query_key():
    """On random unit vectors the NT-Xent form's loss is about log(2N - 1), the q-k form's about log(N)."""
    g = torch.Generator().manual_seed(0)
    h1, h2, k1, k2 = (torch.randn(256, 128, generator=g) for _ in range(4))
    eq2 = momentum_nt_xent(h1, h2, k1, k2, 0.5).item()
    qk = 0.5 * (info_nce(h1, k2, 0.5) + info_nce(h2, k1, 0.5)).item()
    assert abs(eq2 - math.log(511)) < 0.2 and abs(qk - math.log(256)) < 0.2


def test_info_nce_with_queue_by_hand():
    q = [[1.0, 0.0], [0.6, 0.8]]
    k = [[0.8, 0.6], [0.0, 1.0]]
    queue = [[-1.0, 0.0]]
    t = 0.2
    total = 0.0
    for i in range(2):
        logits = [sum(x * y for x, y in zip(q[i], key)) / t for key in k + queue]
        total += -logits[i] + math.log(sum(math.exp(v) for v in logits))
    got = info_nce(torch.tensor(q), torch.tensor(k), t, torch.tensor(queue))
    assert abs(got.item() - total / 2) < 1e-5


def test_distillation_gradient_is_minus_teacher_for_unit_vectors():
    """US3L Eq. 8: d/dz_s of the unit-vector MSE (1 - <z_s, z_t>) is -z_t."""
    g = torch.Generator().manual_seed(0)
    z_s = F.normalize(torch.randn(5, 16, generator=g), dim=1).requires_grad_(True)
    z_t = F.normalize(torch.randn(5, 16, generator=g), dim=1)
    loss = cosine_distance(z_s, z_t).sum()
    loss.backward()
    assert torch.allclose(z_s.grad, -z_t, atol=1e-7)
    # The value is half the squared distance of the unit vectors.
    assert torch.allclose(cosine_distance(z_s, z_t), 0.5 * (z_s - z_t).pow(2).sum(1), atol=1e-6)


def test_unit_mse_normalises_and_is_scale_invariant():
    s, t = torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0, 10.0]])
    assert abs(unit_mse(s, t).item() - (1 - 0.8)) < 1e-6
    assert abs(unit_mse(5 * s, t).item() - unit_mse(s, t).item()) < 1e-6


def test_at_least_fp32_promotes_half_precision_and_keeps_others():
    from us3l.losses import at_least_fp32

    for dtype in (torch.float16, torch.bfloat16):
        out = at_least_fp32(torch.ones(3, dtype=dtype))
        assert out.dtype == torch.float32 and out.tolist() == [1.0, 1.0, 1.0]
    assert at_least_fp32(torch.ones(2, dtype=torch.float64)).dtype == torch.float64
    x = torch.ones(2)
    assert at_least_fp32(x) is x


def test_losses_accept_bfloat16_inputs():
    a, b = torch.randn(4, 8).bfloat16(), torch.randn(4, 8).bfloat16()
    for loss in (nt_xent(a, b), info_nce(a, b), unit_mse(a, b)):
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
