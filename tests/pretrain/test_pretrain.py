"""The pretraining program end to end (tiny, in-process): artifacts, schedule, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from support import ROOT
from torch.optim.optimizer import register_optimizer_step_post_hook

import us3l
from pretrain.__main__ import main

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {
    "preset": "us3l", "arch": "resnet18", "stem": "imagenet", "width_range": [0.25, 1.0], "dataset": "shapes",
    "image_size": 32, "batch_size": 8, "iterations": 4, "lr": 0.1, "proj_hidden": 32, "proj_dim": 16,
    "aux_hidden": 32, "pred_hidden": 16, "num_workers": 0, "amp": False, "checkpoint_every": 2, "log_every": 1,
    "deterministic": True, "device": "cpu",
}


@pytest.fixture(scope="module")
def data_dir(module_dir) -> Path:
    return module_dir


def write_config(path: Path, data_dir: Path, **changes) -> Path:
    path.write_text(yaml.safe_dump({**TINY, "data_root": str(data_dir), **changes}))
    return path


def test_end_to_end_run_writes_a_valid_checkpoint(tmp_path, data_dir, capsys):
    cfg = write_config(tmp_path / "tiny.yaml", data_dir)
    steps = []
    handle = register_optimizer_step_post_hook(lambda *a: steps.append(1))
    try:
        assert main(["--config", str(cfg), f"output_dir={tmp_path / 'out'}"]) == 0
    finally:
        handle.remove()
    assert len(steps) == 4  # exactly one optimizer step per iteration
    run = tmp_path / "out" / "tiny"
    ck = us3l.load_checkpoint(run / "backbone.pth")
    assert (ck.arch, ck.stem, tuple(ck.width_range), ck.method) == ("resnet18", "imagenet", (0.25, 1.0), "us3l")
    assert ck.provenance["iteration"] == 4 and ck.provenance["student_forwards"] == 10  # 2.5 T
    assert ck.config["ssl"]["aux_head"] == "new"
    model = ck.build_model()
    us3l.set_width(model, 0.25)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, us3l.channel_plan("resnet18", 0.25).feature_dim)
    log = (run / "train.log").read_text()
    for i, w in enumerate(["1", "0.75", "0.5", "0.25"]):
        assert f"iteration {i}: stage {i}, min width {w}\n" in log
    assert "student forwards: 10 over 4 iterations (2.5 per iteration)" in log
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [1, 2, 3, 4]
    assert [r["min_width"] for r in records] == [1.0, 0.75, 0.5, 0.25]
    assert all(len(r["proj_std"]) == len(r["widths"]) for r in records)
    assert list((run / "tb").glob("events.out.tfevents.*"))
    # Running again finds the finished run and leaves the checkpoint alone.
    sha = us3l.file_sha256(run / "backbone.pth")
    assert main(["--config", str(cfg), f"output_dir={tmp_path / 'out'}"]) == 0
    assert "already complete" in capsys.readouterr().out
    assert us3l.file_sha256(run / "backbone.pth") == sha


def test_single_width_baseline_checkpoint_range(tmp_path, data_dir):
    cfg = write_config(tmp_path / "simclr.yaml", data_dir, preset="simclr", width=0.5, iterations=2)
    assert main(["--config", str(cfg), f"output_dir={tmp_path}"]) == 0
    ck = us3l.load_checkpoint(tmp_path / "simclr" / "backbone.pth")
    assert tuple(ck.width_range) == (0.5, 0.5) and ck.method == "simclr"
    assert ck.provenance["student_forwards"] == 2


def _corrupt_resume(run: Path) -> None:
    run.mkdir(parents=True)
    (run / "last.pth").write_bytes(b"\x00garbage")


@pytest.mark.parametrize("overrides, setup, message", [
    (["preset=dino"], None, "unknown preset 'dino'"),
    (["width_range=[0.0, 1.0]"], None, "must lie in (0, 1]"),
    (["width_range=[0.25, 1.5]"], None, "must lie in (0, 1]"),
    (["dataset=cifar100"], None, "not found at"),
    (["bogus=1"], None, "unknown config key"),
    (["batch_size=many"], None, "must be an integer"),
    ([], _corrupt_resume, "corrupt or not a training state"),
])
def test_bad_input_is_one_line_error_exit_2(tmp_path, data_dir, capsys, overrides, setup, message):
    cfg = write_config(tmp_path / "bad.yaml", data_dir if "dataset=cifar100" not in overrides else tmp_path / "none")
    run = tmp_path / "out" / "bad"
    if setup:
        setup(run)
    assert main(["--config", str(cfg), f"output_dir={tmp_path / 'out'}", *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m pretrain: error: ") and message in err and "\n" not in err
    assert not (run / "backbone.pth").exists()
    written = sorted(p.name for p in run.iterdir()) if run.exists() else []
    assert written == (["last.pth"] if setup else [])


def test_resume_with_changed_config_is_refused(tmp_path, data_dir, capsys):
    cfg = write_config(tmp_path / "c.yaml", data_dir, iterations=2)
    assert main(["--config", str(cfg), f"output_dir={tmp_path}"]) == 0
    (tmp_path / "c" / "backbone.pth").unlink()
    assert main(["--config", str(cfg), f"output_dir={tmp_path}", "lr=0.2"]) == 2
    assert "different config (lr: 0.1 -> 0.2)" in capsys.readouterr().err


def test_missing_config_and_cli_misuse(tmp_path, capsys):
    assert main(["--config", str(tmp_path / "nope.yaml")]) == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, data_dir, capsys):
    cfg = write_config(tmp_path / "nan.yaml", data_dir, lr=1.0e30, checkpoint_every=1, iterations=6)
    assert main(["--config", str(cfg), f"output_dir={tmp_path}"]) == 1
    err = capsys.readouterr().err
    assert "loss became nan" in err and "last good checkpoint" in err
    state = torch.load(tmp_path / "nan" / "last.pth", weights_only=True)
    assert 1 <= state["iteration"] < 6
    assert not (tmp_path / "nan" / "backbone.pth").exists()


def test_resumed_metrics_drop_records_after_the_checkpoint(tmp_path):
    from pretrain.metrics import RunLogger

    lines = [json.dumps({"iteration": i, "loss": 1.0}) for i in range(1, 6)] + ['{"iteration": 6, "lo']
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    log = RunLogger(tmp_path, enabled=True, start=3)
    log.record({"iteration": 4, "loss": 2.0})
    log.close()
    kept = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["iteration"], r["loss"]) for r in kept] == [(1, 1.0), (2, 1.0), (3, 1.0), (4, 2.0)]


def test_cli_process_exit_status_and_one_line_error(tmp_path, data_dir):
    import os
    import subprocess
    import sys

    cfg = write_config(tmp_path / "cli.yaml", data_dir)
    done = subprocess.run([sys.executable, "-m", "pretrain", "--config", str(cfg), f"output_dir={tmp_path}",
                           "width_range=[0.25, 2]"], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("python -m pretrain: error: width_range")
    assert not (tmp_path / "cli").exists()


def test_group_regularization_replaces_weight_decay_on_the_backbone():
    from pretrain.config import build_config
    from pretrain.train import _param_groups
    from us3l.group_reg import regularized_parameters
    from us3l.ssl import SSLModel

    cfg = build_config({**TINY, "weight_decay": 1e-4})
    model = SSLModel(cfg.objective(), "resnet18", "imagenet")
    grouped, plain = _param_groups(model, cfg, group_reg=True)
    backbone = {id(p) for p in regularized_parameters(model.encoder.backbone)}
    assert grouped["weight_decay"] == 0.0 and {id(p) for p in grouped["params"]} == backbone
    assert plain["weight_decay"] == 1e-4 and not backbone & {id(p) for p in plain["params"]}
    assert {id(p) for p in model.aux_head.parameters()} <= {id(p) for p in plain["params"]}
    _, everything = _param_groups(model, cfg, group_reg=False)
    assert len(everything["params"]) == sum(1 for p in model.parameters() if p.requires_grad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_real_data_without_cuda_stops_naming_device_cpu(tmp_path, data_dir, capsys):
    cfg = write_config(tmp_path / "real.yaml", tmp_path / "no-data", dataset="cifar100", stem="cifar",
                       device="auto")
    assert main(["--config", str(cfg), f"output_dir={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m pretrain: error: no CUDA device is visible")
    assert "pass device=cpu" in err and "\n" not in err
    assert not (tmp_path / "out").exists()
    # the built-in demo data may fall back to the CPU
    demo = write_config(tmp_path / "demo.yaml", data_dir, device="auto", iterations=1)
    assert main(["--config", str(demo), f"output_dir={tmp_path / 'out'}"]) == 0


def test_channels_last_changes_memory_layout_not_the_run(tmp_path, data_dir):
    layouts: list[tuple[bool, bool]] = []  # per conv input: (channels-last contiguous, NCHW contiguous)

    def hook(module, args, output):
        if isinstance(module, torch.nn.Conv2d):
            x = args[0]
            layouts.append((x.is_contiguous(memory_format=torch.channels_last), x.is_contiguous()))

    losses = {}
    for flag in (False, True):
        cfg = write_config(tmp_path / f"cl{int(flag)}.yaml", data_dir, iterations=2, channels_last=flag)
        handle = torch.nn.modules.module.register_module_forward_hook(hook)
        try:
            assert main(["--config", str(cfg), f"output_dir={tmp_path}"]) == 0
        finally:
            handle.remove()
        assert layouts and all(cl if flag else nchw for cl, nchw in layouts)  # (1x1 maps are both)
        assert any(not nchw for _, nchw in layouts) == flag
        layouts.clear()
        losses[flag] = [json.loads(x)["loss"] for x in (tmp_path / f"cl{int(flag)}" / "metrics.jsonl").open()]
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)


def test_step_is_one_iteration_of_the_model_on_given_views(tmp_path, data_dir):
    import copy

    from pretrain import distributed as D
    from pretrain.config import build_config
    from pretrain.train import build_run, lr_at, step
    from us3l.errors import Diverged

    cfg = build_config({**TINY, "data_root": str(data_dir), "output_dir": str(tmp_path), "iterations": 8})
    run = build_run(cfg, "tiny", torch.device("cpu"), D.DistInfo())
    x1, x2 = torch.rand(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(0)).unbind()
    run.iteration = 2  # quarter stage 1 of 8 iterations: max, one random, min 0.75
    widths = run.sampler.widths(2)
    twin = copy.deepcopy(run.model)
    before = [p.detach().clone() for p in run.model.parameters() if p.requires_grad]

    m = step(run, x1, x2)
    expected = twin.train_step(x1, x2, widths, backward=lambda loss: loss.backward())
    assert m.iteration == 2 and m.out.widths == widths and min(widths) == 0.75 and m.lr == lr_at(cfg, 2, 8)
    assert m.loss == expected.loss and m.out.losses == expected.losses  # the same forward/backward, bit for bit
    assert (run.iteration, run.forwards, run.skipped) == (3, 3, 0)
    assert all(not torch.equal(a, b) for a, b in zip(before, run.params))  # every trainable tensor stepped
    assert not (tmp_path / "tiny").exists()  # building and stepping write nothing
    with pytest.raises(Diverged, match=r"loss became nan at iteration 3 .*no checkpoint was written"):
        step(run, torch.full_like(x1, float("nan")), x2)
