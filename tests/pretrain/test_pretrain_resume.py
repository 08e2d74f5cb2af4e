"""Killed with SIGKILL after its first checkpoint and resumed, a run ends bitwise identical to an
uninterrupted one; 2 gloo processes follow the 1-process loss trajectory with the same global batch."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from support import ROOT
from support.pretrain_runs import pretrain_cmd, run_env, run_losses, tiny_config, weights_of


def test_sigkill_after_first_checkpoint_then_resume_is_bitwise_identical(tmp_path):
    cfg = tiny_config(tmp_path, "run", iterations=16, checkpoint_every=4)
    subprocess.run(pretrain_cmd(cfg, tmp_path / "a"), env=run_env(), check=True, capture_output=True, cwd=ROOT)

    run_b = tmp_path / "b" / "run"
    proc = subprocess.Popen(pretrain_cmd(cfg, tmp_path / "b"), env=run_env(), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (run_b / "last.pth").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(run_b / "last.pth", weights_only=True)["iteration"]
    assert killed_at == 4 and not (run_b / "backbone.pth").exists()

    done = subprocess.run(pretrain_cmd(cfg, tmp_path / "b"), env=run_env(), capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "resumed from" in (run_b / "train.log").read_text()
    a, b = weights_of(tmp_path / "a" / "run" / "backbone.pth"), weights_of(run_b / "backbone.pth")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    state_a = torch.load(tmp_path / "a" / "run" / "last.pth", weights_only=True)
    state_b = torch.load(run_b / "last.pth", weights_only=True)
    assert all(torch.equal(state_a["model"][k], state_b["model"][k]) for k in state_a["model"])  # heads, EMA
    assert run_losses(tmp_path / "a" / "run") == run_losses(run_b) and len(run_losses(run_b)) == 16


def test_two_gloo_processes_match_one_process(tmp_path):
    """us3l preset, float64: 2 gloo processes x batch 16 and 1 process x batch 32 (gathered losses,
    synchronized BatchNorm, one gradient all-reduce) end with the same backbone after 3 iterations.

    In float32 the two runs differ by reduction order (~1e-7), enough to flip a ReLU whose input is
    ~1e-7 from zero and make the trajectories drift apart chaotically; float64 keeps ties out of reach."""
    cfg = tiny_config(tmp_path, "ddp", iterations=3, checkpoint_every=3, batch_size=32, precision="float64")
    subprocess.run(pretrain_cmd(cfg, tmp_path / "one"), env=run_env(), check=True, capture_output=True, cwd=ROOT)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          *pretrain_cmd(cfg, tmp_path / "two")[1:]], env=run_env(), capture_output=True, text=True,
                         cwd=ROOT)
    assert two.returncode == 0, two.stderr[-3000:]
    one_rec = [json.loads(x) for x in (tmp_path / "one" / "ddp" / "metrics.jsonl").read_text().splitlines()]
    two_rec = [json.loads(x) for x in (tmp_path / "two" / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in two_rec] == [1, 2, 3]
    assert [r["widths"] for r in one_rec] == [r["widths"] for r in two_rec]
    for r1, r2 in zip(one_rec, two_rec):
        assert abs(r1["loss"] - r2["loss"]) < 1e-9, (r1["iteration"], r1["loss"], r2["loss"])
    a, b = weights_of(tmp_path / "one" / "ddp" / "backbone.pth"), weights_of(tmp_path / "two" / "ddp" / "backbone.pth")
    moved = max((a[k] - _weights_at_init(cfg)[k]).abs().max().item() for k in a if a[k].is_floating_point())
    diff = max((a[k] - b[k]).abs().max().item() for k in a if a[k].is_floating_point())
    print(f"float64 1x32 vs 2x16 after 3 iterations: max |diff| {diff:.3g} (weights moved up to {moved:.3g})")
    assert moved > 1e-3 and diff < 1e-6
    ck = torch.load(tmp_path / "two" / "ddp" / "backbone.pth", weights_only=True)
    assert ck["provenance"]["world_size"] == 2 and ck["provenance"]["precision"] == "float64"


def _weights_at_init(cfg: Path) -> dict[str, torch.Tensor]:
    """The backbone the runs start from (the model is built right after ``torch.manual_seed(seed)``)."""
    from pretrain.config import load_config
    from us3l.ssl import SSLModel

    c = load_config(cfg)
    torch.manual_seed(c.seed)
    model = SSLModel(c.objective(), c.arch, c.stem, c.width_range).double()
    return {k: v for k, v in model.encoder.backbone.state_dict().items()}
