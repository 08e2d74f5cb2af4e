"""One device rule for every program: CUDA when asked or found, CPU only when asked for (or for demo runs).

A real (non-demo) run that finds no CUDA device stops before any work with a one-line error naming the
override, instead of quietly training for days on CPU. The precision names (``float32``, ``amp-float16``,
``amp-bfloat16``) are the ones results records and checkpoints carry.
"""

from __future__ import annotations

import platform
from typing import Any

import torch

from .errors import UsageError

DEVICE_CHOICES = ("auto", "cuda", "cpu")


class DeviceError(UsageError):
    """The requested device is not usable here (one line naming the override)."""


def resolve_device(name: str, *, allow_cpu: bool = False, cpu_flag: str = "--device cpu") -> torch.device:
    """The device for ``name`` (``auto``, ``cuda``, ``cuda:N`` or ``cpu``).

    ``auto`` is CUDA when a device is visible; without one it is CPU only when ``allow_cpu`` (demo runs),
    otherwise :class:`DeviceError` naming ``cpu_flag``, the spelling of the CPU override for this program.
    """
    if name == "cpu":
        return torch.device("cpu")
    if name != "auto" and not (name == "cuda" or name.startswith("cuda:")):
        raise DeviceError(f"unknown device {name!r}; expected one of {', '.join(DEVICE_CHOICES)} or cuda:N")
    if torch.cuda.is_available():
        return torch.device("cuda" if name == "auto" else name)
    if name == "auto" and allow_cpu:
        return torch.device("cpu")
    if name == "auto":
        raise DeviceError(f"no CUDA device is visible and this is not a demo run (it would train on CPU): "
                          f"pass {cpu_flag} to run it on CPU anyway")
    raise DeviceError(f"device {name} requested but no CUDA device is visible: pass {cpu_flag} to run on CPU")


def precision_name(device_type: str, amp: bool) -> str:
    """What ``amp`` means on ``device_type``: float16 autocast (with a GradScaler) on CUDA, bfloat16 on CPU."""
    if not amp:
        return "float32"
    return "amp-float16" if device_type == "cuda" else "amp-bfloat16"


def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(device: torch.device | str, count: int = 1) -> dict[str, Any]:
    """``{"type", "name", "count"}`` of the devices a job used (for records); CPU counts as one device."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device.index if device.index is not None else 0)
    else:
        name = cpu_name()
        count = 1
    return {"type": device.type, "name": name, "count": int(count)}
