import subprocess
import sys

import pytest
import torch

import detection.d2compat as d2compat


def test_detectron2_modeling_and_evaluation_import() -> None:
    code = "import detection.d2compat, detectron2.modeling, detectron2.evaluation, detectron2.layers"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(d2compat.has_native_ops(), reason="a full Detectron2 with _C is installed")
def test_missing_op_raises_clear_error() -> None:
    from detectron2.layers import ModulatedDeformConv, deform_conv
    from detectron2.layers.rotated_boxes import pairwise_iou_rotated

    with pytest.raises(d2compat.MissingOpError, match="box_iou_rotated.*build Detectron2 from source"):
        pairwise_iou_rotated(torch.zeros(2, 5), torch.zeros(2, 5))
    # On CUDA a deformable conv layer calls this op; on CPU Detectron2 itself refuses the layer.
    with pytest.raises(d2compat.MissingOpError, match="modulated_deform_conv_forward"):
        deform_conv._C.modulated_deform_conv_forward(torch.zeros(1))
    layer = ModulatedDeformConv(4, 4, 3, padding=1)
    x = torch.randn(1, 4, 5, 5)
    with pytest.raises(NotImplementedError):
        layer(x, torch.zeros(1, 18, 5, 5), torch.ones(1, 9, 5, 5))


def test_install_is_idempotent() -> None:
    d2compat.install()
    d2compat.install()
    assert sum(isinstance(f, d2compat._StandInFinder) for f in sys.meta_path) == 1


def test_plain_import_works_in_the_project_venv() -> None:
    # `make install` adds a start-up hook so that no project import is needed first.
    subprocess.run([sys.executable, "-c", "import detectron2.modeling, detectron2.evaluation"], check=True)
