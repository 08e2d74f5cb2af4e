"""us3l.jobs: the job spec (validation, canonical form, identity), run records (strict JSON, failed records),
provenance."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
from support.layouts import write_checkpoint

import us3l
from us3l.jobs import (
    RECORD_VERSION,
    Diverged,
    JobSpec,
    SpecError,
    canonical,
    git_state,
    make_record,
    read_records,
    record_name,
    spec_diff,
    spec_id,
    split_metrics,
    write_record,
)

SPEC = JobSpec(task="linear", dataset="cifar10", width=0.5, checkpoint="/a/ck.pth", checkpoint_sha256="ab" * 32,
               method="us3l", arch="resnet18", seed=0, demo=False, protocol={"lr": 30.0, "epochs": 100})


def test_canonical_form():
    assert canonical({"w": 1 / 3, "t": (1, 2.5), "b": True, "n": None}) == {"w": 0.333333333333, "t": [1, 2.5],
                                                                              "b": True, "n": None}
    assert canonical([math.nan, math.inf, -math.inf]) == ["nan", "inf", "-inf"]  # strict JSON, still distinct
    with pytest.raises(SpecError, match="cannot go into a job spec"):
        canonical({"x": object()})


def test_identity_is_the_canonical_spec_less_the_path():
    assert SPEC.id == replace(SPEC).id == spec_id(SPEC.to_dict()) and len(SPEC.id) == 16
    assert replace(SPEC, checkpoint="/moved/ck.pth").id == SPEC.id  # the sha256 identifies the checkpoint
    others = [replace(SPEC, protocol={**SPEC.protocol, "lr": 3.0}), replace(SPEC, overrides=("K", "1")),
              replace(SPEC, seed=1), replace(SPEC, demo=True), replace(SPEC, random_init=True),
              replace(SPEC, width=0.25), replace(SPEC, dataset="cifar100"), replace(SPEC, task="voc"),
              replace(SPEC, checkpoint_sha256="cd" * 32)]
    assert len({SPEC.id, *(s.id for s in others)}) == len(others) + 1
    # widths compare as numbers: 1/3 and its 12-digit text are one width, 0.3333333 is another
    third = replace(SPEC, width=1 / 3)
    assert third.id == replace(SPEC, width=float("0.333333333333")).id != replace(SPEC, width=0.3333333).id
    assert spec_diff(SPEC.to_dict(), others[0].to_dict()) == ["protocol.lr"]
    assert spec_diff(SPEC.to_dict(), replace(SPEC, checkpoint="/b").to_dict()) == []


@pytest.mark.parametrize("change, message", [
    ({"task": "segmentation"}, "unknown task"),
    ({"width": 0.0}, "width must be a number in"),
    ({"width": math.nan}, "width must be a number in"),
    ({"seed": -1}, "seed must be an integer >= 0"),
    ({"checkpoint_sha256": "abc"}, "64 hex digits"),
    ({"protocol": {"f": print}}, "cannot go into a job spec"),
])
def test_invalid_specs_are_refused(change, message):
    with pytest.raises(SpecError, match=message):
        replace(SPEC, **change)


def test_for_checkpoint_checks_the_width_against_its_range(tmp_path):
    ck = us3l.load_checkpoint(write_checkpoint(tmp_path / "ck.pth"))
    spec = JobSpec.for_checkpoint(ck, task="linear", dataset="cifar10", width=0.5, seed=0, demo=False, protocol={})
    assert (spec.checkpoint_sha256, spec.method, spec.arch) == (ck.sha256, "test", "resnet18")
    assert JobSpec.for_checkpoint(ck, task="linear", dataset="cifar10", width=0.5, seed=0, demo=False, protocol={},
                                  random_init=True).method == "random-init"
    with pytest.raises(SpecError, match=r"width 0.1 is outside the range \[0.25, 1\]"):
        JobSpec.for_checkpoint(ck, task="linear", dataset="cifar10", width=0.1, seed=0, demo=False, protocol={})
    with pytest.raises(SpecError, match="changed since this job was specified"):
        spec.check_checkpoint("00" * 32)


def test_metrics_failures_and_strict_records(tmp_path):
    assert split_metrics({"AP": 50.0, "APl": math.nan}, required=("AP",)) == ({"AP": 50.0}, ["APl"])
    for bad in ({"AP": math.nan}, {"AP": math.inf}, {}):
        with pytest.raises(Diverged):
            split_metrics(bad, required=("AP",))
    with pytest.raises(ValueError, match="undefined_metrics"):
        make_record(SPEC, metrics={"top1": math.nan}, cost={}, provenance={}, wall_time_s=1.0)
    with pytest.raises(ValueError, match="no metrics"):
        make_record(SPEC, metrics={"top1": 1.0}, cost={}, provenance={}, wall_time_s=1.0, error="x")
    nan_lr = replace(SPEC, protocol={"lr": math.nan})
    failed = make_record(nan_lr, metrics={}, cost={}, provenance={}, wall_time_s=1.0, error="Diverged: loss\nnan")
    path = write_record(tmp_path, failed)
    assert path.name == record_name(nan_lr.to_dict()) == f"linear-cifar10-w0.5000-{nan_lr.id}.json"
    text = path.read_text()
    assert "NaN" not in text and json.loads(text)["spec"]["protocol"]["lr"] == "nan"
    [back] = read_records(tmp_path)
    assert (back["status"], back["error"], back["metrics"], back["id"]) == ("failed", "Diverged: loss nan", {},
                                                                           nan_lr.id)
    # the same spec again replaces its record; other versions and other JSON files are not records
    write_record(tmp_path, make_record(nan_lr, metrics={"top1": 1.0}, cost={}, provenance={}, wall_time_s=1.0))
    (tmp_path / "old.json").write_text(json.dumps({"record_version": RECORD_VERSION - 1, "task": "linear"}))
    (tmp_path / "notes.json").write_text("[1, 2]")
    [back] = read_records(tmp_path)
    assert back["status"] == "ok"
    (tmp_path / "bad.json").write_text('{"record_version": 2, "x": NaN}')
    with pytest.raises(ValueError, match="bad.json: not a readable record"):
        read_records(tmp_path)


def test_git_state_of_this_checkout():
    commit, dirty = git_state()
    assert len(commit) == 40 and set(commit) <= set("0123456789abcdef") and isinstance(dirty, bool)
