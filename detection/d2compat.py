"""Make Detectron2 importable when it was built without its C++/CUDA extension ``detectron2._C``.

The project's install builds Detectron2 0.6 as pure Python. ``detectron2.layers`` and
``detectron2.evaluation`` import ``_C`` at module level (deformable conv, rotated boxes, rotated
ROIAlign, the fast COCO evaluator) although Faster/Mask R-CNN FPN never call those ops. This module
registers an import hook that supplies a stand-in ``detectron2._C`` whose ops raise
:class:`MissingOpError` naming the op and the fix, but only where no real extension is found.
Everything in the project imports Detectron2 through this module.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types

FIX = ("it needs Detectron2's compiled C++/CUDA ops (detectron2._C), which this install lacks; "
       "build Detectron2 from source with its extension and run with PYTHON=/path/to/that/python")


class MissingOpError(RuntimeError):
    """A Detectron2 op from the absent C++ extension was called."""


class _MissingExtension(types.ModuleType):
    """Stand-in for ``detectron2._C``: every op raises :class:`MissingOpError`."""


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


class _StandInLoader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return _MissingExtension()

    def exec_module(self, module: types.ModuleType) -> None:
        """Nothing to run: the stand-in is complete when created."""


class _StandInFinder(importlib.abc.MetaPathFinder):
    """Last on ``sys.meta_path``: supplies ``detectron2._C`` only when no real one was found."""

    def find_spec(self, fullname: str, path=None, target=None) -> importlib.machinery.ModuleSpec | None:
        if fullname != "detectron2._C":
            return None
        return importlib.util.spec_from_loader(fullname, _StandInLoader())


def has_native_ops() -> bool:
    """True when a compiled ``detectron2._C`` is installed."""
    spec = importlib.util.find_spec("detectron2._C")
    return spec is not None and not isinstance(spec.loader, _StandInLoader)


def install() -> None:
    """Put the stand-in finder last on ``sys.meta_path`` (idempotent; a real ``_C`` is always found first).

    The project's install also does this at interpreter start-up through a ``.pth`` file in the
    virtual environment, so that plain ``import detectron2.modeling`` works there.
    """
    if not any(isinstance(f, _StandInFinder) for f in sys.meta_path):
        sys.meta_path.append(_StandInFinder())


install()
