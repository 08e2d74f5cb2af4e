"""The base-objective registry: a new objective is one registered class, selected by ``base_loss``."""

from __future__ import annotations

import pytest
import torch

from us3l.objectives import OBJECTIVES, Objective, Pair, get_objective, register
from us3l.ssl import SSLConfig, SSLModel, preset_config

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {"proj_hidden": 32, "proj_dim": 16, "pred_hidden": 16, "aux_hidden": 32}


class ToyMeanSquare(Objective):
    """Mean squared difference of the two views' head outputs (a trivial loss, for the test only)."""

    has_predictor = True

    def loss(self, h: Pair, z: Pair, k: Pair | None, model: SSLModel) -> torch.Tensor:
        return (h[0] - h[1]).pow(2).mean()


@pytest.fixture
def toy():
    """``ToyMeanSquare`` registered as ``toy`` for one test, the way an objective file registers its class."""
    register("toy")(ToyMeanSquare)
    try:
        yield ToyMeanSquare
    finally:
        del OBJECTIVES["toy"]


def test_the_papers_base_losses_are_registered():
    assert {"infonce", "infonce_qk", "mse"} <= set(OBJECTIVES)
    assert get_objective("mse").has_predictor and not get_objective("infonce").has_predictor


def test_a_registered_objective_is_selected_by_base_loss_and_trained(toy):
    cfg = preset_config("us3l", base_loss="toy", **SMALL)
    model = SSLModel(cfg, "resnet18", "imagenet")
    assert isinstance(model.objective, toy) and model.predictor is not None  # it owns its predictor
    assert cfg.terms()["base"] == "toy" and cfg.base_head == "predictor"
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(4, 3, 32, 32, generator=g), torch.randn(4, 3, 32, 32, generator=g)
    with torch.no_grad():  # the toy formula on the same weights and inputs (BN in training mode, as in the step)
        h1, h2 = model.predictor(model.encoder(torch.cat([x1, x2]))).chunk(2)
        expected = (h1 - h2).pow(2).mean().item()
    out = model.train_step(x1, x2, [1.0], lambda loss: loss.backward())
    assert out.losses == [pytest.approx(expected, rel=1e-5)]
    for mod in (model.predictor, model.encoder.projector, model.encoder.backbone):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in mod.parameters())


def test_a_name_is_registered_once(toy):
    with pytest.raises(ValueError, match="'toy' is already registered by ToyMeanSquare"):
        register("toy")(ToyMeanSquare)
    with pytest.raises(ValueError, match="already registered"):
        register("infonce")(ToyMeanSquare)


def test_an_unknown_name_is_a_one_line_error_listing_the_known_ones():
    with pytest.raises(ValueError) as err:
        get_objective("l1")
    assert str(err.value) == "unknown base objective 'l1'; known: infonce, infonce_qk, mse"
    with pytest.raises(ValueError) as err:
        SSLConfig(base_loss="l1").validate()
    assert str(err.value) == "base_loss='l1' is not one of ('infonce', 'infonce_qk', 'mse')"


def test_a_queue_needs_an_objective_that_uses_one(toy):
    with pytest.raises(ValueError, match="queue_size > 0"):
        preset_config("us3l", base_loss="toy", queue_size=8)
