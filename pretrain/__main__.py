"""Command line: ``python -m pretrain --config FILE [key=value ...]`` (also under ``torchrun``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from us3l.errors import run_cli

from .config import load_config
from .train import train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pretrain",
        description="Pretrain a universally slimmable self-supervised ResNet. The run directory is "
                    "<output_dir>/<config file stem>; an existing run there is resumed.")
    parser.add_argument("--config", required=True, help="YAML file, e.g. pretrain/configs/demo_shapes.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. batch_size=64")
    args = parser.parse_args(argv)

    def run() -> None:
        train(load_config(args.config, args.overrides), Path(args.config).stem)

    return run_cli(parser.prog, run)


if __name__ == "__main__":
    sys.exit(main())
