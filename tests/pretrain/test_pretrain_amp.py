"""AMP in pretraining: bfloat16 autocast on CPU (the CPU twin of CUDA's float16 + GradScaler), the
precision recorded, scaler state across devices, and a skipped step agreed by every process."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from torch import nn

import us3l
from pretrain.__main__ import main
from pretrain.config import build_config
from pretrain.state import restore_scaler
from pretrain.train import apply_gradients, autocast_dtype, precision_name

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {
    "arch": "resnet18", "stem": "imagenet", "width_range": [0.25, 1.0], "dataset": "shapes", "image_size": 32,
    "batch_size": 8, "iterations": 2, "lr": 0.1, "proj_hidden": 32, "proj_dim": 16, "aux_hidden": 32,
    "pred_hidden": 16, "num_workers": 0, "amp": True, "checkpoint_every": 2, "log_every": 1, "device": "cpu",
}


@pytest.fixture(scope="module")
def data_dir(module_dir) -> Path:
    return module_dir


@pytest.mark.parametrize("preset", ["us3l", "byol", "simclr", "mocov2"])
def test_amp_pretraining_runs_in_bfloat16_on_cpu(tmp_path, data_dir, preset):
    cfg = tmp_path / f"{preset}.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "preset": preset, "data_root": str(data_dir)}))
    conv_dtypes: set[torch.dtype] = set()

    def hook(module: nn.Module, args, output) -> None:
        if isinstance(module, nn.Conv2d) and isinstance(output, torch.Tensor):
            conv_dtypes.add(output.dtype)

    handle = nn.modules.module.register_module_forward_hook(hook)
    try:
        assert main(["--config", str(cfg), f"output_dir={tmp_path}"]) == 0
    finally:
        handle.remove()
    assert conv_dtypes == {torch.bfloat16}  # autocast really ran every convolution in bfloat16
    records = [json.loads(x) for x in (tmp_path / preset / "metrics.jsonl").read_text().splitlines()]
    assert [r["precision"] for r in records] == ["amp-bfloat16"] * 2
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    ck = us3l.load_checkpoint(tmp_path / preset / "backbone.pth")
    assert ck.provenance["precision"] == "amp-bfloat16" and ck.provenance["device"]["type"] == "cpu"
    state = torch.load(tmp_path / preset / "last.pth", weights_only=True)
    assert state["precision"] == "amp-bfloat16"


def test_precision_follows_device_amp_and_dtype():
    amp, fp32, fp64 = (build_config({"amp": a, "precision": p}) for a, p in
                       ((True, "float32"), (False, "float32"), (True, "float64")))
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert (autocast_dtype(amp, cpu), autocast_dtype(amp, cuda)) == (torch.bfloat16, torch.float16)
    assert [precision_name(c, d) for c in (amp, fp32, fp64) for d in (cpu, cuda)] == [
        "amp-bfloat16", "amp-float16", "float32", "float32", "float64", "float64"]


def test_scaler_state_restores_across_precisions():
    saved = torch.amp.GradScaler("cpu", init_scale=1024.0)
    state = saved.state_dict()
    assert state["scale"] == 1024.0
    fresh = torch.amp.GradScaler("cpu", init_scale=4.0)
    restore_scaler(fresh, state)  # float16 state into a float16 run: loaded
    assert fresh.get_scale() == 1024.0
    from_bf16 = torch.amp.GradScaler("cpu", init_scale=4.0)
    restore_scaler(from_bf16, torch.amp.GradScaler("cpu", enabled=False).state_dict())  # bf16 state: {}
    assert from_bf16.get_scale() == 4.0  # starts from its initial scale instead of crashing
    disabled = torch.amp.GradScaler("cpu", enabled=False)
    restore_scaler(disabled, state)
    assert not disabled.is_enabled()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _skip_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    p = nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    results = []
    # step 1: rank 1's own gradient overflowed, rank 0's is finite; step 2: both finite
    for bad in (rank == 1, False):
        scaler.scale(torch.zeros(()))  # as a training step scales its loss first
        p.grad = torch.full((3,), float("inf")) if bad else torch.full((3,), 8.0)
        skipped = apply_gradients(opt, scaler, [p], None, 0.0)
        results.append({"skipped": skipped, "p": p.detach().tolist(), "scale": scaler.get_scale()})
    Path(out, f"{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


def test_overflow_on_one_process_skips_the_step_on_every_process(tmp_path):
    mp.spawn(_skip_worker, args=(_free_port(), str(tmp_path)), nprocs=2)
    r0, r1 = (json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1))
    assert r0 == r1  # identical decisions and parameters on both processes
    assert r0[0]["skipped"] and r0[0]["p"] == [1.0, 1.0, 1.0] and r0[0]["scale"] == 4.0
    # then a normal step: gradient 8 at scale 4 unscales to 2, lr 0.1
    assert not r0[1]["skipped"] and r0[1]["p"] == pytest.approx([0.8, 0.8, 0.8])
