"""Individually trained baselines: one command trains one run per width."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import us3l
from pretrain.per_width import main, run_name

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {
    "preset": "simclr", "arch": "resnet18", "stem": "imagenet", "width_range": [0.25, 1.0], "width": 1.0,
    "dataset": "shapes", "image_size": 32, "batch_size": 8, "iterations": 2, "lr": 0.1, "proj_hidden": 32,
    "proj_dim": 16, "num_workers": 0, "amp": False, "checkpoint_every": 2, "log_every": 1, "device": "cpu",
}


@pytest.fixture(scope="module")
def data_dir(module_dir) -> Path:
    return module_dir


def _config(path: Path, data_dir: Path, **changes) -> str:
    path.write_text(yaml.safe_dump({**TINY, "data_root": str(data_dir), **changes}))
    return str(path)


def test_one_run_per_width(tmp_path, data_dir, capsys):
    cfg = _config(tmp_path / "simclr_tiny.yaml", data_dir)
    assert main(["--config", cfg, "--widths", "1.0,0.25", f"output_dir={tmp_path / 'out'}"]) == 0
    for w in (1.0, 0.25):
        ck = us3l.load_checkpoint(tmp_path / "out" / run_name("simclr_tiny", w) / "backbone.pth")
        assert tuple(ck.width_range) == (w, w) and ck.method == "simclr" and ck.config["ssl"]["width"] == w
    assert run_name("simclr_tiny", 0.25) == "simclr_tiny_w025"
    assert "width 0.25:" in capsys.readouterr().out


@pytest.mark.parametrize("changes, args, message", [
    ({"preset": "us3l", "aux_hidden": 32}, [], "trains one slimmable model"),
    ({"width_range": [0.5, 1.0]}, ["--widths", "1.0,0.25"], "outside width_range"),
    ({}, ["--widths", "1.0,x"], "comma-separated numbers"),
])
def test_bad_input_is_a_clear_error_before_any_run(tmp_path, data_dir, capsys, changes, args, message):
    cfg = _config(tmp_path / "bad.yaml", data_dir, **changes)
    assert main(["--config", cfg, *args, f"output_dir={tmp_path / 'out'}"]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "out").exists()
