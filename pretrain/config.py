"""Pretraining configuration: a YAML file plus ``key=value`` overrides, validated up front.

Keys are the program's own (:class:`PretrainConfig`) and the objective's switches (``us3l.ssl.SSLConfig``
fields); a preset sets the switches' defaults, the file and the command line override them.

A file may name one base, ``_base_: other.yaml`` (relative to the file), loaded first and recursively;
the file's keys then replace the base's (keys are flat, a list such as ``width_range`` is replaced whole),
and ``key=value`` overrides come last. Every runnable config still names its ``preset``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from us3l.channels import ARCHS, check_width_range
from us3l.data import PRETRAIN_DATASETS, is_image_folder
from us3l.errors import UsageError
from us3l.models import STEMS
from us3l.ssl import PRESETS, SSL_FIELDS, SSLConfig, preset_config


class ConfigError(UsageError):
    """Bad configuration or command-line input (exit status 2)."""


@dataclass
class PretrainConfig:
    """Everything a pretraining run depends on (the objective's switches live in ``ssl``)."""

    preset: str = "us3l"
    arch: str = "resnet50"
    stem: str = "imagenet"
    width_range: tuple[float, float] = (0.25, 1.0)
    dataset: str = "imagenet"
    data_root: str | None = None
    image_size: int = 224
    batch_size: int = 256
    epochs: int = 100
    iterations: int | None = None
    lr: float = 0.5
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 0
    group_ramp: float = 0.5
    seed: int = 0
    num_workers: int = 8
    amp: bool = True
    precision: str = "float32"
    sync_bn: bool = True
    channels_last: bool = False
    deterministic: bool = False
    checkpoint_every: int = 1000
    log_every: int = 20
    output_dir: str = "output/pretrain"
    device: str = "auto"
    ssl: dict[str, Any] = field(default_factory=dict)

    def objective(self) -> SSLConfig:
        return preset_config(self.preset, **self.ssl)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["width_range"] = list(self.width_range)
        d["ssl"] = asdict(self.objective())
        return d


PROGRAM_FIELDS = tuple(f.name for f in fields(PretrainConfig) if f.name != "ssl")
# Keys that may change between a run and its resumption without changing the result.
RESUME_FREE_KEYS = {"num_workers", "checkpoint_every", "log_every", "output_dir", "device", "data_root"}


def parse_value(text: str) -> Any:
    """A command-line value as YAML (``0.5`` -> float, ``true`` -> bool, ``[0.25,1]`` -> list)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"cannot parse value {text!r}: {e}".replace("\n", " ")) from e


BASE_KEY = "_base_"


def _read_chain(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The keys of ``path`` over those of its ``_base_`` chain; ``chain`` holds the files that include it."""
    if not path.is_file():
        where = f" (the {BASE_KEY} of {chain[-1]})" if chain else "; pick one of pretrain/configs/*.yaml"
        raise ConfigError(f"config file {path} not found{where}")
    if path.resolve() in {p.resolve() for p in chain}:
        raise ConfigError(f"{BASE_KEY} cycle in {chain[0]}: {' -> '.join(str(p) for p in (*chain, path))}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}".replace("\n", " ")) from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must be a mapping of key: value, got {type(raw).__name__}")
    base = raw.pop(BASE_KEY, None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"{path}: {BASE_KEY} must be one file name relative to it, got {base!r}")
    return {**_read_chain(path.parent / base, (*chain, path)), **raw}


def load_raw(path: str | Path, overrides: list[str] = ()) -> dict[str, Any]:
    """The flat mapping of ``path`` resolved through its bases, with ``key=value`` overrides applied."""
    raw = _read_chain(Path(path))
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value (e.g. batch_size=64)")
        raw[key.strip()] = parse_value(value)
    return raw


def load_config(path: str | Path, overrides: list[str] = ()) -> PretrainConfig:
    """Read ``path`` (and its bases), apply ``key=value`` overrides and validate; :class:`ConfigError` otherwise."""
    return build_config(load_raw(path, overrides))


def build_config(raw: dict[str, Any]) -> PretrainConfig:
    """A validated :class:`PretrainConfig` from a flat mapping of program keys and objective switches."""
    known = set(PROGRAM_FIELDS) | set(SSL_FIELDS)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}; known keys: {sorted(known)}")
    program = {k: v for k, v in raw.items() if k in PROGRAM_FIELDS}
    ssl = {k: v for k, v in raw.items() if k in SSL_FIELDS}
    cfg = PretrainConfig(**program, ssl=ssl)
    validate(cfg)
    return cfg


def _check_type(cfg: PretrainConfig) -> None:
    for f in fields(PretrainConfig):
        value = getattr(cfg, f.name)
        if f.name in ("width_range", "ssl", "data_root", "iterations") or value is None:
            continue
        default = getattr(PretrainConfig(), f.name)
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ConfigError(f"{f.name} must be true or false, got {value!r}")
        if isinstance(default, int) and not isinstance(default, bool) and (
                isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{f.name} must be an integer, got {value!r}")
        if isinstance(default, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ConfigError(f"{f.name} must be a number, got {value!r}")
        if isinstance(default, str) and not isinstance(value, str):
            raise ConfigError(f"{f.name} must be a string, got {value!r}")


def validate(cfg: PretrainConfig) -> None:
    """Raise :class:`ConfigError` naming the fix for any invalid value."""
    _check_type(cfg)
    if cfg.preset not in PRESETS:
        raise ConfigError(f"unknown preset {cfg.preset!r}; expected one of {sorted(PRESETS)}")
    if cfg.arch not in ARCHS:
        raise ConfigError(f"unknown arch {cfg.arch!r}; expected one of {sorted(ARCHS)}")
    if cfg.stem not in STEMS:
        raise ConfigError(f"unknown stem {cfg.stem!r}; expected one of {STEMS}")
    if cfg.dataset not in PRETRAIN_DATASETS and not is_image_folder(cfg.dataset):
        raise ConfigError(f"unknown dataset {cfg.dataset!r}; expected one of {PRETRAIN_DATASETS} or imagefolder:PATH")
    wr = cfg.width_range
    if (not isinstance(wr, (list, tuple)) or len(wr) != 2
            or not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in wr)):
        raise ConfigError(f"width_range must be [min, max], got {wr!r}")
    lo, hi = check_width_range(float(wr[0]), float(wr[1]), what="width_range")
    cfg.width_range = (lo, hi)
    try:
        ssl = cfg.objective()
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from e
    if ssl.sampler == "single" and lo != hi:
        if not lo <= ssl.width <= hi:
            raise ConfigError(f"width {ssl.width:g} is outside width_range [{lo:g}, {hi:g}]")
        cfg.width_range = (float(ssl.width), float(ssl.width))
    for name in ("batch_size", "epochs", "checkpoint_every", "log_every", "image_size"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.iterations is not None and (isinstance(cfg.iterations, bool) or not isinstance(cfg.iterations, int)
                                       or cfg.iterations < 1):
        raise ConfigError(f"iterations must be a positive integer or null, got {cfg.iterations!r}")
    if cfg.batch_size < 2:
        raise ConfigError("batch_size must be >= 2 (contrastive losses need negatives)")
    if cfg.num_workers < 0 or cfg.warmup_iters < 0 or not 0.0 <= cfg.group_ramp <= 1.0:
        raise ConfigError("num_workers and warmup_iters must be >= 0 and group_ramp in [0, 1]")
    if cfg.precision not in ("float32", "float64"):
        raise ConfigError(f"precision must be float32 or float64, got {cfg.precision!r}")
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda, got {cfg.device!r}")
