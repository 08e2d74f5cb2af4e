"""Individually trained baselines: one run per width from one config.

``python -m pretrain.per_width --config FILE [--widths 1.0,0.75,0.5,0.25] [key=value ...]`` trains the
config's single-width method (``sampler: single``) once at each width, one after the other, into
``<output_dir>/<config stem>_w100`` ... ``_w025``; each run resumes or is skipped when complete like
``python -m pretrain``. The Table 2 and Table 4 baselines (SimCLR, SimSiam, BYOL) are trained this way.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from us3l.errors import run_cli

from .config import ConfigError, PretrainConfig, build_config, load_raw
from .train import train

PAPER_WIDTHS = (1.0, 0.75, 0.5, 0.25)


def run_name(stem: str, width: float) -> str:
    """``<stem>_w<width in hundredths>``, e.g. ``cifar100_r18_byol_w025``."""
    return f"{stem}_w{round(width * 100):03d}"


def parse_widths(text: str) -> tuple[float, ...]:
    try:
        widths = tuple(float(w) for w in text.split(","))
    except ValueError as e:
        raise ConfigError(f"--widths must be comma-separated numbers, e.g. 1.0,0.75,0.5,0.25; got {text!r}") from e
    if not widths or len(set(widths)) != len(widths):
        raise ConfigError(f"--widths must list distinct widths, got {text!r}")
    return widths


def width_configs(path: str | Path, overrides: list[str], widths: tuple[float, ...]) -> list[PretrainConfig]:
    """The config at each width, validated (each width must lie in the file's ``width_range``)."""
    raw = load_raw(path, overrides)
    cfg = build_config(raw)  # reports a bad file or override first
    if cfg.objective().sampler != "single":
        raise ConfigError(f"{path} trains one slimmable model (sampler={cfg.objective().sampler}); "
                          f"per-width training is for single-width baselines: use python -m pretrain")
    return [build_config({**raw, "width": w}) for w in widths]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pretrain.per_width", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML file of a single-width method, "
                                                        "e.g. pretrain/configs/cifar100_r18_byol.yaml")
    parser.add_argument("--widths", default=",".join(f"{w:g}" for w in PAPER_WIDTHS),
                        help="comma-separated widths (default: the paper's 1.0,0.75,0.5,0.25)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. batch_size=64")
    args = parser.parse_args(argv)
    stem = Path(args.config).stem
    def run() -> None:
        for cfg in width_configs(args.config, args.overrides, parse_widths(args.widths)):
            path = train(cfg, run_name(stem, cfg.objective().width))
            print(f"width {cfg.objective().width:g}: {path}")

    return run_cli(parser.prog, run)


if __name__ == "__main__":
    sys.exit(main())
