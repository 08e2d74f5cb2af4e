"""k-nearest-neighbour classification of frozen features (the InstDisc / DINO monitor).

Features are L2-normalised; each test sample takes its ``k`` most cosine-similar training samples,
each voting for its class with weight ``exp(similarity / T)``; the class with the largest total wins.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

KS = (20, 200)
TEMPERATURE = 0.07


@torch.no_grad()
def knn_predict(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, k: int,
                temperature: float = TEMPERATURE, num_classes: int | None = None,
                chunk: int = 1024) -> torch.Tensor:
    """Predicted class of every row of ``test_x`` (weighted vote of its ``k`` nearest training rows)."""
    if k < 1 or temperature <= 0:
        raise ValueError(f"kNN needs k >= 1 and temperature > 0, got k={k}, T={temperature}")
    classes = num_classes or int(train_y.max()) + 1
    k = min(k, len(train_y))
    train = F.normalize(train_x.float(), dim=1)
    out = []
    for part in F.normalize(test_x.float(), dim=1).split(chunk):
        sim, idx = (part @ train.t()).topk(k, dim=1)
        votes = torch.zeros(len(part), classes, dtype=sim.dtype, device=sim.device)
        votes.scatter_add_(1, train_y[idx], (sim / temperature).exp())
        out.append(votes.argmax(dim=1))
    return torch.cat(out)


def knn_top1(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
             ks: tuple[int, ...] = KS, temperature: float = TEMPERATURE) -> dict[str, float]:
    """Top-1 accuracy in percent for each ``k``: ``{"knn20_top1": ..., "knn200_top1": ...}``."""
    classes = int(max(train_y.max(), test_y.max())) + 1
    return {f"knn{k}_top1": 100.0 * (knn_predict(train_x, train_y, test_x, k, temperature, classes) == test_y)
            .float().mean().item() for k in ks}
