"""A demo run with scaled heads: checkpoints left on disk, then ``--eval-only`` on its checkpoints."""

from __future__ import annotations

import pytest

from detection.evaluate import check_test_options, run_dir_of
from detection.train import main
from us3l.jobs import read_records

# 10 iterations, a checkpoint every 2 (iterations 1, 3, 5, 7, 9), detections at any score so that AP > 0.
SCHEDULE = ["SOLVER.MAX_ITER", "10", "SOLVER.CHECKPOINT_PERIOD", "2", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
            "MODEL.US3L.CALIBRATION_BATCHES", "1", "TEST.PRECISE_BN.NUM_ITER", "2", "MODEL.US3L.SCALE_HEADS", "True"]


@pytest.fixture(scope="module")
def finished_run(module_dir, ckpt):
    root = module_dir
    out = ["--demo", "--output", str(root / "det"), "--results", str(root / "res")]
    assert main(["--task", "voc", "--checkpoint", str(ckpt), "--width", "0.25", *out, *SCHEDULE]) == 0
    [run_dir] = (root / "det").glob("voc-demo/w0.2500-*")
    [record] = read_records(root / "res")
    return root, run_dir, record, out


def test_run_keeps_the_last_two_checkpoints_and_the_final_one(finished_run):
    _, run_dir, record, _ = finished_run
    # periodic at 1, 3, 5, 7, 9: the last two are 7 and 9, and 9 is model_final.pth (not written twice)
    assert sorted(p.name for p in run_dir.glob("*.pth")) == ["model_0000007.pth", "model_final.pth"]
    assert (run_dir / "last_checkpoint").read_text() == "model_final.pth"
    assert record["metrics"]["AP50"] > 0


def test_eval_only_reproduces_the_runs_ap_and_records_test_options(finished_run):
    root, run_dir, trained, out = finished_run
    results = root / "res-eval"
    args = ["--task", "voc", "--eval-only", "--weights", str(run_dir / "model_final.pth"), "--demo",
            "--output", str(root / "det"), "--results", str(results)]
    assert main(args) == 0
    [again] = read_records(results)
    assert again["metrics"] == trained["metrics"]
    assert again["spec"]["protocol"]["eval_only"]["test_options"] == {}
    assert main([*args, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.5"]) == 0
    rescored = [r for r in read_records(results) if r["spec"]["protocol"]["eval_only"]["test_options"]]
    assert rescored[0]["spec"]["protocol"]["eval_only"]["test_options"] == {"MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.5}
    assert rescored[0]["metrics"] != trained["metrics"]  # fewer detections kept: another AP
    assert rescored[0]["id"] != again["id"]  # a re-scored run never overwrites another record


def test_eval_only_refuses_training_options_and_files_outside_a_run(finished_run, tmp_path, capsys):
    root, run_dir, _, _ = finished_run
    base = ["--task", "voc", "--eval-only", "--demo", "--output", str(root / "det"), "--results", str(tmp_path)]
    assert main([*base, "--weights", str(run_dir / "model_0000007.pth"), "MODEL.FPN.OUT_CHANNELS", "256"]) == 2
    assert "MODEL.FPN.OUT_CHANNELS would change the trained model" in capsys.readouterr().err
    stray = tmp_path / "model_final.pth"
    stray.write_bytes((run_dir / "model_final.pth").read_bytes())
    assert main([*base, "--weights", str(stray)]) == 2
    assert "has no config.yaml" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.json"))
    with pytest.raises(ValueError, match="SOLVER.MAX_ITER"):
        check_test_options(["SOLVER.MAX_ITER", "5", "TEST.EVAL_PERIOD", "0"])
    assert run_dir_of(run_dir / "model_0000007.pth") == run_dir.resolve()
