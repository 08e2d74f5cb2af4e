"""Training hooks beside Detectron2's: bounded checkpoint disk use.

Detectron2's ``PeriodicCheckpointer`` keeps every ``model_NNNNNNN.pth`` (a Mask R-CNN R50 checkpoint with its
optimizer state is about 0.5 GB, 18 of them per COCO run). Its own ``max_to_keep`` only forgets files saved
by the same process, so a resumed or requeued run still leaves its earlier ones behind.
:class:`KeepLastCheckpoints` prunes the run directory itself after every periodic save.
"""

from __future__ import annotations

import re
from pathlib import Path

import detection.d2compat  # noqa: F401  (before any detectron2 import)

# isort: split
from detectron2.engine import hooks

PERIODIC = re.compile(r"model_(\d{7})\.pth")


def prune_checkpoints(run_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest periodic checkpoints of ``run_dir``; returns the deleted files.

    ``model_final.pth``, any other file, and the checkpoint ``last_checkpoint`` names are never deleted.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    run_dir = Path(run_dir)
    marker = run_dir / "last_checkpoint"
    protected = marker.read_text().strip() if marker.is_file() else None
    periodic = sorted((int(m.group(1)), p) for p in run_dir.iterdir() if (m := PERIODIC.fullmatch(p.name)))
    removed = []
    for _, path in periodic[:-keep]:
        if path.name != protected:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


class KeepLastCheckpoints(hooks.PeriodicCheckpointer):
    """Detectron2's periodic checkpointer, then :func:`prune_checkpoints` after each of its saves.

    When the last iteration is also a periodic one, Detectron2 writes the same state twice
    (``model_NNNNNNN.pth`` and ``model_final.pth``): the periodic copy is deleted, ``model_final.pth`` stays.
    """

    def __init__(self, checkpointer, period: int, keep: int, max_iter: int | None = None) -> None:
        super().__init__(checkpointer, period, max_iter=max_iter)
        self.keep = keep

    @classmethod
    def replacing(cls, hook: hooks.PeriodicCheckpointer, keep: int) -> KeepLastCheckpoints:
        """The same checkpointer, period and final iteration as ``hook``, keeping ``keep`` periodic files."""
        return cls(hook.checkpointer, hook.period, keep, max_iter=hook.max_iter)

    def after_step(self) -> None:
        super().after_step()
        it, save_dir = self.trainer.iter, Path(self.checkpointer.save_dir)
        if (it + 1) % self.period == 0:
            prune_checkpoints(save_dir, self.keep)
        if self.max_iter is not None and it >= self.max_iter - 1 and (save_dir / "model_final.pth").is_file():
            (save_dir / f"model_{it:07d}.pth").unlink(missing_ok=True)


def bound_checkpoints(hook_list: list, keep: int) -> list:
    """``hook_list`` with any ``PeriodicCheckpointer`` replaced by :class:`KeepLastCheckpoints`."""
    return [KeepLastCheckpoints.replacing(h, keep) if isinstance(h, hooks.PeriodicCheckpointer) else h
            for h in hook_list]
