"""Self-supervised losses on projections (row vectors; normalised inside unless stated).

- :func:`nt_xent`: SimCLR's NT-Xent over the 2N samples of two views (each sample's positive is its
  other view; the other 2N-2 samples are negatives).
- :func:`momentum_nt_xent`: US3L's base loss (Eq. 2): NT-Xent over each view's online output together
  with the momentum encoder's output of the other view, averaged over the two pairings.
- :func:`info_nce`: InfoNCE of queries against keys (positive: the key of the same sample; negatives:
  the other N-1 keys, plus an optional queue of past keys as in MoCo).
- :func:`cosine_distance` / :func:`unit_mse`: ``1 - cos``, i.e. half the squared distance of unit
  vectors; its gradient w.r.t. the (unit) student vector is ``-z_t`` (US3L Eq. 8).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 if it is half precision (AMP), else unchanged (float64 stays float64)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent of two views ``a``, ``b`` (N x D): mean over the 2N anchors."""
    if a.shape != b.shape:
        raise ValueError(f"nt_xent needs two views of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    n = a.shape[0]
    z = F.normalize(at_least_fp32(torch.cat([a, b])), dim=1)
    sim = (z @ z.t()) / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, targets)


def momentum_nt_xent(h1: torch.Tensor, h2: torch.Tensor, k1: torch.Tensor, k2: torch.Tensor,
                     temperature: float = 0.5) -> torch.Tensor:
    """US3L Eq. 2: ``(nt_xent(h1, k2) + nt_xent(h2, k1)) / 2`` with online ``h`` and momentum ``k``.

    Each of the 2N anchors (N online, N momentum) has its pair as positive and the other 2N-2 online
    and momentum outputs as negatives; ``k`` carries no gradient (the authors' code: NT-Xent of the
    student against the detached teacher, for both cross-view pairings).
    """
    k1, k2 = k1.detach(), k2.detach()
    return 0.5 * (nt_xent(h1, k2, temperature) + nt_xent(h2, k1, temperature))


def info_nce(q: torch.Tensor, k: torch.Tensor, temperature: float = 0.5,
             queue: torch.Tensor | None = None) -> torch.Tensor:
    """InfoNCE: row i of ``q`` should match row i of ``k`` against the other keys (and ``queue``)."""
    qn, kn = F.normalize(at_least_fp32(q), dim=1), F.normalize(at_least_fp32(k), dim=1)
    logits = qn @ kn.t()
    if queue is not None:
        logits = torch.cat([logits, qn @ F.normalize(at_least_fp32(queue), dim=1).t()], dim=1)
    return F.cross_entropy(logits / temperature, torch.arange(q.shape[0], device=q.device))


def cosine_distance(u_s: torch.Tensor, u_t: torch.Tensor) -> torch.Tensor:
    """Per-row ``1 - <u_s, u_t>`` of unit vectors (= half their squared distance)."""
    return 1.0 - (u_s * u_t).sum(dim=-1)


def unit_mse(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Mean :func:`cosine_distance` of the normalised ``s`` and ``t`` (negative cosine plus one)."""
    return cosine_distance(F.normalize(at_least_fp32(s), dim=-1), F.normalize(at_least_fp32(t), dim=-1)).mean()
