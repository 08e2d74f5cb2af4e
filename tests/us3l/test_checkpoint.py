from pathlib import Path

import pytest
import torch
import torchvision

import us3l
from us3l.models import USResNet


def _save(tmp_path: Path, arch: str = "resnet18", **kw) -> Path:
    model = USResNet(arch, num_classes=0, **kw)
    return us3l.save_checkpoint(tmp_path / f"{arch}.pth", model, method="us3l", config={"lr": 0.1},
                                provenance={"epoch": 3, "step": 30, "data": "shapes"})


def test_round_trip(tmp_path: Path) -> None:
    path = _save(tmp_path, width_range=(0.5, 1.0))
    ck = us3l.load_checkpoint(path)
    assert (ck.arch, ck.stem, ck.width_range, ck.divisor, ck.method) == ("resnet18", "imagenet", (0.5, 1.0), 8, "us3l")
    assert ck.provenance["step"] == 30 and ck.sha256 == us3l.file_sha256(path)
    model = ck.build_model()
    assert model.width_range == (0.5, 1.0)
    torch.testing.assert_close(model.layer2[0].conv1.weight, ck.state_dict["layer2.0.conv1.weight"])
    assert not any(k.startswith("fc.") for k in ck.state_dict)
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temporary file


def test_width_checked_against_checkpoint_range(tmp_path: Path) -> None:
    ck = us3l.load_checkpoint(_save(tmp_path, width_range=(0.5, 1.0)))
    assert ck.check_width("0.75") == 0.75
    with pytest.raises(ValueError, match=r"outside the range \[0.5, 1\]"):
        ck.check_width(0.25)


def test_torchvision_state_dict_is_named(tmp_path: Path) -> None:
    path = tmp_path / "tv.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(us3l.CheckpointError, match="plain state dict"):
        us3l.load_checkpoint(path)


def test_truncated_file(tmp_path: Path) -> None:
    path = _save(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(us3l.CheckpointError, match="truncated or corrupt"):
        us3l.load_checkpoint(path)


def test_other_arch_and_missing_file(tmp_path: Path) -> None:
    path = _save(tmp_path, "resnet18")
    with pytest.raises(us3l.CheckpointError, match="holds a resnet18, expected a resnet50"):
        us3l.load_checkpoint(path, arch="resnet50")
    with pytest.raises(us3l.CheckpointError, match="no such file"):
        us3l.load_checkpoint(tmp_path / "nope.pth")


@pytest.mark.parametrize("rng", [[0.25, 1.0, 0.5], [0.5], {0.25: 0, 1.0: 1}, [1.0, 0.25], ["0.25", "1.0"]])
def test_width_range_must_be_two_ordered_numbers(tmp_path: Path, rng) -> None:
    path = _save(tmp_path)
    obj = torch.load(path, weights_only=True)
    obj["width_range"] = rng
    torch.save(obj, path)
    with pytest.raises(us3l.CheckpointError, match="width range .* is invalid"):
        us3l.load_checkpoint(path)


def test_model_width_range_must_be_a_pair() -> None:
    with pytest.raises(ValueError):
        USResNet("resnet18", width_range=(0.25, 1.0, 0.5))


def test_tampered_shapes_and_fields(tmp_path: Path) -> None:
    path = _save(tmp_path)
    obj = torch.load(path, weights_only=True)
    obj["state_dict"]["layer1.0.conv1.weight"] = torch.zeros(8, 8, 3, 3)
    torch.save(obj, path)
    with pytest.raises(us3l.CheckpointError, match="mis-shaped"):
        us3l.load_checkpoint(path)
    obj["arch"] = "resnet50"
    torch.save(obj, path)
    with pytest.raises(us3l.CheckpointError, match="missing"):
        us3l.load_checkpoint(path)
    obj["version"] = 99
    torch.save(obj, path)
    with pytest.raises(us3l.CheckpointError, match="version 99"):
        us3l.load_checkpoint(path)
    torch.save({"model": {}, "optimizer": {}}, path)
    with pytest.raises(us3l.CheckpointError, match="training-state"):
        us3l.load_checkpoint(path)
