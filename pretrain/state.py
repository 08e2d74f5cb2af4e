"""Resumable training state (``last.pth``): written atomically, validated on load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from us3l.checkpoint import atomic_torch_save

from .config import RESUME_FREE_KEYS, ConfigError

STATE_FORMAT = "us3l-pretrain-state"
STATE_VERSION = 1
_KEYS = ("iteration", "model", "optimizer", "scaler", "rng", "config", "forwards")


class ResumeError(ConfigError):
    """The run directory's training state cannot be resumed (exit status 2)."""


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(path: Path, *, iteration: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, config: dict[str, Any], forwards: int, precision: str) -> Path:
    """Everything needed to continue bit-for-bit after ``iteration`` completed iterations."""
    return atomic_torch_save({
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "iteration": iteration,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": rng_state(),
        "config": config,
        "forwards": forwards,
        "precision": precision,
    }, path)


def restore_scaler(scaler: torch.amp.GradScaler, saved: dict[str, Any]) -> None:
    """Load a saved GradScaler state where it applies.

    A run may resume on another device (``device`` is free to change), e.g. a bfloat16 CPU state
    (no scaler) continued in float16 on CUDA: an enabled scaler without saved state starts from its
    initial scale, and a disabled one ignores what was saved. Both continue correctly.
    """
    if scaler.is_enabled() and saved:
        scaler.load_state_dict(saved)


def _differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    keys = (set(saved) | set(current)) - RESUME_FREE_KEYS
    return [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in sorted(keys) if saved.get(k) != current.get(k)]


def load_state(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    """Read and check ``path`` against the current run's ``config``; :class:`ResumeError` otherwise."""
    fix = f"delete {path} to start over, or use another output_dir"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unreadable file: truncated, garbage, foreign pickle
        raise ResumeError(f"{path} is corrupt or not a training state ({type(e).__name__}); {fix}") from e
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ResumeError(f"{path} is not a us3l pretraining state; {fix}")
    if state.get("version") != STATE_VERSION:
        raise ResumeError(f"{path} has state version {state.get('version')!r}, expected {STATE_VERSION}; {fix}")
    missing = [k for k in _KEYS if k not in state]
    if missing:
        raise ResumeError(f"{path} lacks {missing}; it is incomplete; {fix}")
    diff = _differences(state["config"], config)
    if diff:
        raise ResumeError(f"{path} was written with a different config ({'; '.join(diff)}); {fix}")
    return state
