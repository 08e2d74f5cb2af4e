"""Linear evaluation: end to end on CIFAR pickles, the feature cache, the protocol, errors."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from support.layouts import write_checkpoint, write_cifar10

import us3l
from transfer import linear
from transfer.features import cache_key, cache_path, load_cached, save_cached
from transfer.linear import Evaluation, Protocol, accuracy, backbone_batches, cached_batches, fit_linear, make_job
from us3l.jobs import read_records, spec_diff, spec_id


@pytest.fixture(scope="module")
def setup(module_dir):
    root = module_dir
    write_cifar10(root / "data", n_train=100, n_test=50)
    ckpt = write_checkpoint(root / "ck.pth")
    return root, ckpt


def _argv(root, ckpt, width="0.5", *extra):
    return ["--dataset", "cifar10", "--checkpoint", str(ckpt), "--width", width, "--results", str(root / "results"),
            "--data-root", str(root / "data"), "--cache-dir", str(root / "cache"), "--epochs", "20", "--lr", "0.1",
            "--device", "cpu", *extra]


def _entries(root):
    return {p.name: p.stat().st_mtime_ns for p in (root / "cache").glob("*.pt")}


def test_cli_writes_record_with_top1_params_macs(setup, capsys):
    root, ckpt = setup
    assert linear.main(_argv(root, ckpt)) == 0
    assert "top-1" in capsys.readouterr().out
    [path] = (root / "results").glob("linear-cifar10-w0.5000-*.json")
    rec = json.loads(path.read_text())
    spec, prov = rec["spec"], rec["provenance"]
    assert (spec["task"], spec["dataset"], spec["width"], spec["demo"]) == ("linear", "cifar10", 0.5, False)
    assert spec["checkpoint_sha256"] == us3l.file_sha256(ckpt) and rec["status"] == "ok"
    assert rec["metrics"]["top1"] > 60  # colour-coded classes: far above chance (10) even from random init
    params, macs = us3l.count_params_macs("resnet18", 0.5, input_size=32, num_classes=0, stem="cifar")
    assert (rec["cost"]["backbone_params"], rec["cost"]["backbone_macs"]) == (params, macs)
    assert spec["protocol"]["epochs"] == 20 and rec["cost"]["input_size"] == 32
    assert (prov["data"]["train_size"], prov["data"]["test_size"]) == (100, 50)
    assert (spec["seed"], prov["precision"]) == (0, "float32")
    assert (prov["device"]["type"], prov["device"]["count"]) == ("cpu", 1)
    assert prov["device"]["name"] and prov["host"]
    # the cached features have the width's feature size, and name the job that wrote them
    [train] = [p for p in (root / "cache").glob("cifar10-train-w0.5000-*.pt")]
    entry = torch.load(train)
    assert entry["x"].shape == (100, us3l.channel_plan("resnet18", 0.5).feature_dim)
    assert entry["written_by"] == rec["id"]


def test_runs_differing_only_in_lr_leave_two_records(setup, tmp_path):
    root, ckpt = setup

    def run(*extra: str) -> dict:
        argv = _argv(root, ckpt, "0.5", "--epochs", "3", *extra)
        argv[argv.index("--results") + 1] = str(tmp_path / "r")
        assert linear.main(argv) == 0
        return {r["id"]: r for r in read_records(tmp_path / "r")}

    first = run()
    both = run("--lr", "0.05")  # the last --lr wins: only the learning rate differs
    assert len(first) == 1 and len(both) == 2 and set(first) < set(both)
    assert sorted(r["spec"]["protocol"]["lr"] for r in both.values()) == [0.05, 0.1]
    assert [spec_diff(*(r["spec"] for r in both.values()))] == [["protocol.lr"]]
    assert set(run("--lr", "0.05")) == set(both)  # the same spec again replaces its own record
    scratch = run("--random-init")
    [rec] = [r for i, r in scratch.items() if i not in both]
    assert rec["spec"]["random_init"] is True and rec["spec"]["method"] == "random-init"


def test_lr_nan_fails_with_a_failed_record_and_exit_1(setup, tmp_path, capsys):
    root, ckpt = setup
    argv = _argv(root, ckpt, "0.5", "--epochs", "3", "--lr", "nan")
    argv[argv.index("--results") + 1] = str(tmp_path / "r")
    assert linear.main(argv) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bars
    assert line.startswith("python -m transfer.linear: error: diverged: the linear classifier's loss became NaN")
    [path] = (tmp_path / "r").glob("linear-cifar10-w0.5000-*.json")
    rec = json.loads(path.read_text(), parse_constant=_no_constants)  # strict JSON
    assert (rec["status"], rec["metrics"], rec["undefined_metrics"]) == ("failed", {}, [])
    assert rec["error"].startswith("Diverged: ") and rec["spec"]["protocol"]["lr"] == "nan"
    assert line.endswith(str(path))


def _no_constants(name: str) -> None:
    raise AssertionError(f"{name} in a record")


def test_record_has_every_provenance_field(setup, tmp_path):
    root, ckpt = setup
    argv = _argv(root, ckpt, "0.5", "--epochs", "1")
    argv[argv.index("--results") + 1] = str(tmp_path / "r")
    assert linear.main(argv) == 0
    [path] = (tmp_path / "r").glob("linear-cifar10-w0.5000-*.json")
    rec = json.loads(path.read_text(), parse_constant=_no_constants)
    print(json.dumps(rec, indent=2))  # pytest -s shows one whole record
    assert set(rec) == {"record_version", "id", "status", "error", "spec", "metrics", "undefined_metrics", "cost",
                        "provenance", "wall_time_s", "finished_at"}
    prov = rec["provenance"]
    assert {"git_commit", "git_dirty", "command", "host", "device", "precision", "world_size", "versions",
            "checkpoint_sha256", "spec_id"} <= set(prov)
    assert len(prov["git_commit"]) == 40 and isinstance(prov["git_dirty"], bool)
    assert prov["git_commit"] == subprocess.run(["git", "-C", str(Path(linear.__file__).parents[1]), "rev-parse",
                                                 "HEAD"], capture_output=True, text=True).stdout.strip()
    assert prov["command"].startswith("python -m transfer.linear --dataset cifar10 ")
    assert "--width 0.5" in prov["command"] and prov["host"] and prov["device"]["name"]
    assert (prov["precision"], prov["world_size"], prov["device"]["count"]) == ("float32", 1, 1)
    assert {"python", "torch", "torchvision", "numpy"} <= set(prov["versions"])
    assert prov["checkpoint_sha256"] == rec["spec"]["checkpoint_sha256"] == us3l.file_sha256(ckpt)
    assert prov["spec_id"] == rec["id"] == spec_id(rec["spec"]) and path.name.endswith(f"-{rec['id']}.json")
    assert rec["wall_time_s"] > 0 and rec["finished_at"]


def test_cache_is_reused_and_stale_entries_are_not(setup, tmp_path):
    root, _ = setup
    ckpt = write_checkpoint(tmp_path / "ck.pth", seed=1)
    data = tmp_path / "data"
    shutil.copytree(root / "data", data)
    argv = ["--dataset", "cifar10", "--checkpoint", str(ckpt), "--width", "0.25", "--results", str(tmp_path / "r"),
            "--data-root", str(data), "--cache-dir", str(tmp_path / "cache"), "--epochs", "3", "--lr", "0.1",
            "--device", "cpu"]
    assert linear.main(argv) == 0
    first = _entries(tmp_path)
    top1 = json.loads(next((tmp_path / "r").glob("*.json")).read_text())["metrics"]["top1"]
    assert len(first) == 2  # train and test
    assert linear.main(argv) == 0
    assert _entries(tmp_path) == first  # read back, not rewritten
    assert json.loads(next((tmp_path / "r").glob("*.json")).read_text())["metrics"]["top1"] == top1
    write_checkpoint(ckpt, seed=2)  # new weights at the same path: new entries
    assert linear.main(argv) == 0
    second = _entries(tmp_path)
    assert len(second) == 4 and set(first) < set(second)
    write_cifar10(data, n_train=100, n_test=50, seed=5)  # new data: new entries
    assert linear.main(argv) == 0
    assert len(_entries(tmp_path)) == 6


def test_entry_stored_under_another_key_is_not_read(tmp_path):
    key_a = cache_key(checkpoint_sha256="a" * 64, width=0.5, dataset="cifar10", split="train", data="d")
    key_b = {**key_a, "checkpoint_sha256": "b" * 64}
    from transfer.features import Features

    save_cached(tmp_path, key_a, Features(torch.ones(3, 4), torch.zeros(3, dtype=torch.int64)), written_by="x")
    assert load_cached(tmp_path, key_a) is not None
    shutil.copy(cache_path(tmp_path, key_a), cache_path(tmp_path, key_b))  # a mislabelled entry
    assert load_cached(tmp_path, key_b) is None
    cache_path(tmp_path, key_a).write_bytes(b"truncated")
    assert load_cached(tmp_path, key_a) is None


def test_cached_training_equals_training_through_the_backbone(setup):
    root, ckpt = setup
    ev = Evaluation(*make_job(_argv(root, ckpt, "0.75", "--epochs", "4", "--batch-size", "64")))
    train, test = ev.features("train"), ev.features("test")
    dev, protocol = torch.device("cpu"), Protocol.of(ev.spec)
    assert (protocol.epochs, protocol.lr, protocol.batch_size) == (4, 0.1, 64)
    a = fit_linear(cached_batches(train, protocol, dev), train.x.shape[1], 10, protocol, dev)
    b = fit_linear(backbone_batches(ev.backbone(), ev.data["train"], protocol, dev, 0), train.x.shape[1], 10,
                   protocol, dev)
    torch.testing.assert_close(a.weight, b.weight, atol=1e-4, rtol=1e-4)
    assert accuracy(a, test, dev) == accuracy(b, test, dev)


def test_features_equal_the_calibrated_slimmable_model(setup):
    root, ckpt = setup
    job = make_job(_argv(root, ckpt, "0.35", "--calib-batches", "1", "--calib-batch-size", "100"))
    feats = Evaluation(*job).features("test")
    # independent reference: the slimmable model itself, BN statistics from the whole training set at 0.35
    model = us3l.load_checkpoint(ckpt).build_model()
    ev = Evaluation(*job)
    images = torch.stack([ev.data["train"][i][0] for i in range(100)])
    us3l.calibrate_bn(model, 0.35, [images], 1)
    test_images = torch.stack([ev.data["test"][i][0] for i in range(50)])
    with torch.no_grad():
        ref = model.eval()(test_images)
    torch.testing.assert_close(feats.x, ref, atol=1e-4, rtol=1e-4)
    assert feats.y.tolist() == [i % 10 for i in range(50)]


def test_protocol_defaults_are_the_papers():
    p = Protocol()
    assert (p.epochs, p.lr, p.momentum, p.weight_decay, p.batch_size) == (100, 30.0, 0.9, 0.0, 256)
    assert p.milestone_epochs() == [60, 80]


def test_accuracy_top_k():
    from transfer.features import Features

    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.3, 0.3, 0.4], [0.5, 0.2, 0.3]])
    feats = Features(logits, torch.tensor([1, 2, 2, 2]))
    acc = accuracy(torch.nn.Identity(), feats, torch.device("cpu"), ks=(1, 2, 5))
    assert acc == {"top1": 50.0, "top2": 75.0}


def test_augment_mode_writes_its_own_record(setup):
    root, ckpt = setup
    assert linear.main(_argv(root, ckpt, "0.25", "--augment", "--epochs", "1")) == 0
    [path] = (root / "results").glob("linear-cifar10-w0.2500-*.json")
    rec = json.loads(path.read_text())
    assert rec["spec"]["task"] == "linear" and rec["spec"]["protocol"]["augment"] is True


@pytest.mark.parametrize("change, message", [
    (("--dataset", "flowers102"), "flowers-102"),
    (("--width", "0.1"), "[0.25, 1]"),
    (("--demo",), "--dataset shapes"),
])
def test_bad_input_is_one_line_exit_2(setup, capsys, change, message):
    root, ckpt = setup
    argv = _argv(root, ckpt)
    if len(change) == 2:
        argv[argv.index(change[0]) + 1] = change[1]
    else:
        argv.append(change[0])
    assert linear.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    if "flowers" in message:
        assert "DEMO=1" in err and str(root / "data") in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_real_data_without_cuda_needs_device_cpu(setup, tmp_path, capsys):
    root, ckpt = setup
    argv = _argv(root, ckpt)
    argv[argv.index("--device") + 1] = "auto"
    argv[argv.index("--results") + 1] = str(tmp_path / "r")
    assert linear.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m transfer.linear: error: no CUDA device") and "--device cpu" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "r").exists()


def test_not_a_checkpoint_and_bad_epochs(setup, tmp_path, capsys):
    root, ckpt = setup
    bogus = tmp_path / "weights.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, bogus)
    argv = _argv(root, ckpt)
    argv[argv.index("--checkpoint") + 1] = str(bogus)
    assert linear.main(argv) == 2
    assert "not a us3l backbone checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        linear.main([*_argv(root, ckpt), "--epochs", "0"])
    assert e.value.code == 2


@pytest.mark.slow  # generates the 3000 demo images; make demo runs this path too
def test_demo_shapes_is_tagged_demo(tmp_path):
    ckpt = us3l.save_checkpoint(tmp_path / "ck.pth", us3l.models.us_resnet18(num_classes=0), method="test",
                                config={}, provenance={"image_size": 32})  # pretrained on the shapes at 32 px
    argv = ["--dataset", "shapes", "--demo", "--checkpoint", str(ckpt), "--width", "0.25", "--results",
            str(tmp_path / "r"), "--data-root", str(tmp_path / "data"), "--epochs", "2"]
    assert linear.main(argv) == 0
    rec = json.loads(next((tmp_path / "r").glob("*.json")).read_text())
    assert rec["spec"]["demo"] is True and rec["spec"]["dataset"] == "shapes" and rec["cost"]["input_size"] == 32
    assert rec["provenance"]["data"]["num_classes"] == 6


def test_input_size_follows_the_pretraining_size_unless_overridden(setup, tmp_path):
    root, _ = setup
    ckpt = us3l.save_checkpoint(tmp_path / "ck32.pth", us3l.models.us_resnet18(num_classes=0), method="test",
                                config={}, provenance={"image_size": 32})  # ImageNet stem, pretrained at 32 px
    results = tmp_path / "r"
    base = _argv(root, ckpt, "0.25", "--epochs", "1", "--calib-batches", "1")
    base[base.index("--results") + 1] = str(results)
    assert linear.main(base) == 0
    assert linear.main([*base, "--image-size", "224"]) == 0
    by_size = {r["spec"]["protocol"]["image_size"]: r for r in read_records(results)}
    assert sorted(by_size) == [32, 224]
    assert [by_size[s]["cost"]["input_size"] for s in (32, 224)] == [32, 224]
    assert "CenterCrop(size=(32, 32))" in by_size[32]["provenance"]["data"]["transform"]
    assert "Resize(size=256" in by_size[224]["provenance"]["data"]["transform"]
    assert by_size[224]["cost"]["backbone_macs"] > 40 * by_size[32]["cost"]["backbone_macs"]
