"""Make Detectron2 importable when it was built without its C++/CUDA extension ``detectron2._C``.

The project's install builds Detectron2 0.6 as pure Python. ``detectron2.layers`` and
``detectron2.evaluation`` import ``_C`` at module level (deformable conv, rotated boxes, rotated
ROIAlign, the fast COCO evaluator) although Faster/Mask R-CNN FPN never call those ops. Importing
this module first installs a stand-in ``detectron2._C`` whose ops raise :class:`MissingOpError`
naming the op and the fix. Where the real extension exists this module changes nothing.
Everything in the project imports Detectron2 through this module.
"""

from __future__ import annotations

import importlib.util
import sys
import types

FIX = ("it needs Detectron2's compiled C++/CUDA ops (detectron2._C), which this install lacks; "
       "build Detectron2 from source with its extension and run with PYTHON=/path/to/that/python")


class MissingOpError(RuntimeError):
    """A Detectron2 op from the absent C++ extension was called."""


class _MissingExtension(types.ModuleType):
    """Stand-in for ``detectron2._C``: every op raises :class:`MissingOpError`."""

    __file__ = __name__ + " (stand-in)"

    def __init__(self) -> None:
        super().__init__("detectron2._C", "Stand-in for the absent Detectron2 C++ extension.")

    @staticmethod
    def get_compiler_version() -> str:
        return "not built (us3l-bench pure-Python Detectron2)"

    @staticmethod
    def get_cuda_version() -> str:
        return "not built"

    @staticmethod
    def has_cuda() -> bool:
        return False

    def __getattr__(self, op: str):
        if op.startswith("__"):
            raise AttributeError(op)

        def missing(*args, **kwargs):
            raise MissingOpError(f"Detectron2 op '{op}' was called, but {FIX}")

        return missing


def has_native_ops() -> bool:
    """True when a compiled ``detectron2._C`` is installed."""
    if isinstance(sys.modules.get("detectron2._C"), _MissingExtension):
        return False
    return importlib.util.find_spec("detectron2._C") is not None


def install() -> None:
    """Register the stand-in ``detectron2._C`` unless the real one exists (idempotent)."""
    if "detectron2._C" in sys.modules or has_native_ops():
        return
    import detectron2

    stub = _MissingExtension()
    sys.modules["detectron2._C"] = stub
    detectron2._C = stub  # type: ignore[attr-defined]


install()
