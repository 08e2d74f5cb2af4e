"""Loss values computed by hand (plain Python floats, explicit sums) for the loss and objective tests."""

from __future__ import annotations

import math


def unit(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def dot(u: list[float], v: list[float]) -> float:
    return sum(x * y for x, y in zip(u, v))


def nt_xent(a: list[list[float]], b: list[list[float]], t: float) -> float:
    """Mean over the 2N samples of [a; b]: -log softmax of the pair (i, i +- N) over all j != i."""
    z = [unit(v) for v in a + b]
    n, total = len(a), 0.0
    for i in range(2 * n):
        sims = {j: dot(z[i], z[j]) / t for j in range(2 * n) if j != i}
        total += -sims[(i + n) % (2 * n)] + math.log(sum(math.exp(s) for s in sims.values()))
    return total / (2 * n)


def eq2(h1, h2, k1, k2, t: float) -> float:
    """US3L Eq. 2: NT-Xent of online outputs with the momentum outputs of the other view, both pairings."""
    return 0.5 * (nt_xent(h1, k2, t) + nt_xent(h2, k1, t))


def info_nce(q, k, t: float, queue=()) -> float:
    """Mean over queries: -log softmax of the query's own key among all keys and the queue."""
    total = 0.0
    for i, qi in enumerate(q):
        logits = [dot(unit(qi), unit(key)) / t for key in list(k) + list(queue)]
        total += -logits[i] + math.log(sum(math.exp(v) for v in logits))
    return total / len(q)


def qk(h1, h2, k1, k2, t: float, queue=()) -> float:
    """The query-key form of the momentum base loss (N-1 negatives per query, plus the queue)."""
    return 0.5 * (info_nce(h1, k2, t, queue) + info_nce(h2, k1, t, queue))


def cosine(s, t) -> float:
    """Mean of 1 - cos(s_i, t_i)."""
    return sum(1.0 - dot(unit(a), unit(b)) for a, b in zip(s, t)) / len(s)


def symmetric_cosine(h1, h2, t1, t2) -> float:
    """(cosine(h1, t2) + cosine(h2, t1)) / 2: each view's prediction toward the other view's target."""
    return 0.5 * (cosine(h1, t2) + cosine(h2, t1))
