"""The shipped pretraining configs: each loads, names its sources, and follows the paper's setup."""

from __future__ import annotations

import pytest
from support import ROOT

from pretrain.config import ConfigError, load_config

CONFIGS = sorted((ROOT / "pretrain" / "configs").glob("*.yaml"))
# Table 2 (CIFAR-100) and Table 4 (ImageNet) methods: config stem -> (preset, trained per width).
BASELINES = {
    "cifar100_r18_simclr": ("simclr", True), "cifar100_r18_simsiam": ("simsiam", True),
    "cifar100_r18_byol": ("byol", True), "cifar100_r50_byol": ("byol", True),
    "cifar100_r18_us_simclr": ("us_simclr", False), "cifar100_r50_us_simclr": ("us_simclr", False),
    "cifar100_r18_us_simsiam": ("us_simsiam", False), "cifar100_r50_us_simsiam": ("us_simsiam", False),
    "cifar100_r18": ("us3l", False), "cifar100_r50": ("us3l", False),
    "imagenet_r18_byol": ("byol", True), "imagenet_r50_byol": ("byol", True),
    "imagenet_r18_us_byol": ("us_byol", False), "imagenet_r50_us_byol": ("us_byol", False),
    "imagenet_r18": ("us3l_byol", False), "imagenet_r50": ("us3l_byol", False),
}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_and_says_where_its_values_come_from(path):
    cfg = load_config(path)
    header = "".join(line for line in path.read_text().splitlines(keepends=True) if line.startswith("#"))
    if path.stem.startswith("demo_"):  # demo configs say so and read the built-in data
        assert header.startswith("# DEMO:") and cfg.dataset == "shapes"
    else:
        assert "Table" in header and "authors'" in header
        assert cfg.batch_size == 512  # Sec. 4.1 (ImageNet) and the authors' CIFAR configs
    if cfg.objective().regularizer == "group":
        assert cfg.objective().group_schedule in header  # the alpha schedule is documented per config


def test_every_table_2_and_4_method_has_a_config():
    stems = {p.stem for p in CONFIGS}
    assert set(BASELINES) <= stems
    for stem, (preset, per_width) in BASELINES.items():
        path = next(p for p in CONFIGS if p.stem == stem)
        cfg = load_config(path)
        assert cfg.preset == preset and (cfg.objective().sampler == "single") == per_width
        assert ("pretrain.per_width" in path.read_text()) == per_width
        assert cfg.epochs == (100 if stem.startswith("imagenet") else 400)


def test_base_then_file_then_command_line(tmp_path):
    (tmp_path / "common").mkdir()
    (tmp_path / "common" / "root.yaml").write_text("arch: resnet18\nlr: 0.1\nbatch_size: 16\nema: 0.9\n")
    (tmp_path / "common" / "mid.yaml").write_text("_base_: root.yaml\nlr: 0.2\nwidth_range: [0.5, 1.0]\n")
    (tmp_path / "run.yaml").write_text("_base_: common/mid.yaml\nbatch_size: 32\nwidth_range: [0.25, 0.75]\n")
    cfg = load_config(tmp_path / "run.yaml", ["batch_size=64"])
    assert (cfg.arch, cfg.lr, cfg.objective().ema) == ("resnet18", 0.2, 0.9)  # root, mid over root, root's switch
    assert cfg.batch_size == 64 and cfg.width_range == (0.25, 0.75)  # command line last; a list is replaced whole


def test_base_cycle_is_a_one_line_error_naming_the_file(tmp_path):
    (tmp_path / "a.yaml").write_text("_base_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\n")
    with pytest.raises(ConfigError, match=r"_base_ cycle in .*a\.yaml: .*a\.yaml -> .*b\.yaml -> .*a\.yaml$"):
        load_config(tmp_path / "a.yaml")


@pytest.mark.parametrize("text, message", [
    ("_base_: gone.yaml\n", r"config file .*gone\.yaml not found \(the _base_ of .*run\.yaml\)$"),
    ("_base_: [a.yaml, b.yaml]\n", r"run\.yaml: _base_ must be one file name"),
])
def test_bad_base_is_a_one_line_error_naming_the_file(tmp_path, text, message):
    (tmp_path / "run.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message) as e:
        load_config(tmp_path / "run.yaml")
    assert "\n" not in str(e.value)
