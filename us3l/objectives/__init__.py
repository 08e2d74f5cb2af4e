"""Base objectives, registered by ``base_loss`` name (:mod:`us3l.objectives.base`); one file each."""

from . import cosine, moco, ntxent  # noqa: F401  (importing a module registers its objective)
from .base import OBJECTIVES, Objective, Pair, get_objective, mlp, register

__all__ = ["OBJECTIVES", "Objective", "Pair", "get_objective", "mlp", "register"]
