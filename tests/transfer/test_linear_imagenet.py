"""ImageNet linear evaluation (SimSiam's protocol) on a tiny ImageFolder fixture: end to end, resume, two processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from support import ROOT
from support.layouts import IMAGENET_WNIDS, write_imagenet

import us3l
from transfer import linear
from transfer.linear import Evaluation, Protocol, fit_linear, make_job
from us3l.jobs import read_records

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(module_dir):
    root = module_dir
    write_imagenet(root / "data", n_train=8, n_val=2)  # 4 classes: 32 train, 8 val images of 48-64 px
    torch.manual_seed(0)
    ckpt = us3l.save_checkpoint(root / "ck.pth", us3l.models.us_resnet18(num_classes=0), method="test", config={},
                                provenance={"image_size": 64})  # the protocol's 224 wins over the pretraining size
    return root, ckpt


def _argv(root, ckpt, results, *extra):
    return ["--dataset", "imagenet", "--checkpoint", str(ckpt), "--width", "0.25", "--results", str(results),
            "--data-root", str(root / "data"), "--cache-dir", str(root / "cache"), "--device", "cpu",
            "--calib-batches", "1", "--calib-batch-size", "16", *extra]


def test_defaults_are_simsiams_protocol(setup):
    root, ckpt = setup
    spec, _ = make_job(_argv(root, ckpt, root / "r"))
    p = spec.protocol
    assert (p["optimizer"], p["schedule"], p["epochs"], p["batch_size"], p["weight_decay"]) == \
        ("lars", "cosine", 90, 4096, 0.0)
    assert p["lr"] == pytest.approx(0.1 * 4096 / 256) and p["augment"] is True and p["image_size"] == 224
    # the lr follows an overridden batch size; other datasets keep the paper's SGD / step protocol
    assert make_job(_argv(root, ckpt, root / "r", "--batch-size", "512"))[0].protocol["lr"] == pytest.approx(0.2)


def test_end_to_end_on_the_imagenet_layout(setup, capsys):
    root, ckpt = setup
    results = root / "e2e"
    assert linear.main(_argv(root, ckpt, results, "--batch-size", "16", "--epochs", "2")) == 0
    print(capsys.readouterr().out)
    [rec] = read_records(results)
    spec, prov = rec["spec"], rec["provenance"]
    assert (spec["task"], spec["dataset"], rec["status"]) == ("linear", "imagenet", "ok")
    assert (spec["protocol"]["optimizer"], spec["protocol"]["schedule"]) == ("lars", "cosine")
    assert spec["protocol"]["lr"] == pytest.approx(0.1 * 16 / 256) and spec["protocol"]["augment"] is True
    assert rec["cost"]["input_size"] == 224 and "Resize(size=256" in prov["data"]["transform"]
    assert "CenterCrop(size=(224, 224))" in prov["data"]["transform"]
    assert (prov["data"]["train_size"], prov["data"]["test_size"], prov["data"]["num_classes"]) == (32, 8, 1000)
    assert prov["world_size"] == 1 and 0 <= rec["metrics"]["top1"] <= 100
    assert not list((root / "runs").rglob("classifier_state.pth"))  # a finished run removes its state
    print(f"wall time {rec['wall_time_s']:.1f} s, top-1 {rec['metrics']['top1']:.1f}")


def test_a_killed_run_resumes_to_the_uninterrupted_result(setup, tmp_path):
    root, ckpt = setup
    ev = Evaluation(*make_job(_argv(root, ckpt, tmp_path, "--batch-size", "16", "--epochs", "3",
                                    "--image-size", "64")))
    assert ev.spec.protocol["image_size"] == 64 and ev.spec.protocol["augment"] is True
    protocol, dim, dev = Protocol.of(ev.spec), us3l.channel_plan("resnet18", 0.25).feature_dim, torch.device("cpu")
    whole = fit_linear(ev.train_batches(protocol), dim, 1000, protocol, dev)
    batches = ev.train_batches(protocol)

    def killed(epoch: int):
        if epoch == 2:
            raise KeyboardInterrupt
        return batches(epoch)

    state = tmp_path / "run" / "classifier_state.pth"
    with pytest.raises(KeyboardInterrupt):
        fit_linear(killed, dim, 1000, protocol, dev, state=state, job=ev.spec.id)
    saved = torch.load(state, weights_only=True)
    assert saved["epoch"] == 2 and saved["optimizer"]["state"]  # LARS momentum buffers are in the state
    resumed = fit_linear(batches, dim, 1000, protocol, dev, state=state, job=ev.spec.id)
    assert torch.equal(resumed.weight, whole.weight) and torch.equal(resumed.bias, whole.bias)
    # a state written by another job is not resumed: training starts over (and differs from the resumed weights)
    torch.save({**saved, "classifier": {k: v + 1 for k, v in saved["classifier"].items()}}, state)
    other = fit_linear(batches, dim, 1000, protocol, dev, state=state, job="another-job")
    assert torch.equal(other.weight, whole.weight)


def test_two_gloo_processes_equal_one(setup, tmp_path):
    root, ckpt = setup
    argv = _argv(root, ckpt, tmp_path / "r", "--batch-size", "16", "--epochs", "3", "--image-size", "64",
                 "--no-augment", "--lr", "0.5")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "-m", "transfer.linear", *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    [two] = read_records(tmp_path / "r")
    assert two["provenance"]["world_size"] == 2 and two["status"] == "ok"
    assert linear.main(argv) == 0  # the same spec in one process: the same classifier up to rounding
    [one] = read_records(tmp_path / "r")
    assert one["id"] == two["id"] and one["provenance"]["world_size"] == 1
    assert one["metrics"] == pytest.approx(two["metrics"])


def test_fixture_is_the_imagenet_layout(setup):
    root, _ = setup
    assert sorted(p.name for p in (root / "data" / "imagenet" / "train").iterdir()) == list(IMAGENET_WNIDS)
    assert json.dumps(sorted(p.name for p in (root / "data" / "imagenet").iterdir())) == '["train", "val"]'
