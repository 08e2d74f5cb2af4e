"""Every row of the paper's ablation Tables 7, 9, 13 and 14 as a configuration (a preset plus keys).

Each row states what it should train: the base network's loss, head and target, the sub-networks'
loss, head and target, the sampler and the regulariser. The test checks that the configuration
resolves to exactly that (:meth:`us3l.ssl.SSLConfig.terms`), that the model has exactly the modules
those words need, and that one training iteration runs. ``python tests/us3l/test_ablations.py`` prints
the table. Case numbers are given where the issue that asked for the rows names them; the other rows
are described by what they vary.
"""

from __future__ import annotations

import math

import pytest
import torch

from us3l.group_reg import GroupRegularizer
from us3l.ssl import SSLModel, preset_config

# Words of SSLConfig.terms(), abbreviated for the table below.
E2, NT, COS, NTD = "nt_xent(online, momentum) [Eq. 2]", "nt_xent(online views)", "cosine", "nt_xent(student, teacher)"
MOM, INB, SELF = "momentum, other view", "other view (in-batch)", "own projection (detached), other view"
BASE, MOM_W = "base projection (detached), other view", "momentum at own width, other view"
WD, GR = "weight decay", "group alpha=0.05 G=8 ramp"
S3, DYN = "sandwich n=3", "dynamic n=3 (quarters)"
# Table 7 isolates the loss: a fixed sandwich of 3 and plain weight decay for every row.
T7 = {"sampler": "sandwich", "num_widths": 3, "regularizer": "weight_decay"}

# (table, row, preset, keys, (base, base head, base target, sub, sub head, sub target, sampler, regulariser))
ROWS = [
    ("7", "case 1: SimSiam, sub-networks with their own loss", "us_simsiam",
     {"distill_loss": "own", "aux_head": "off"},
     (COS, "predictor", SELF, "own: cosine", "predictor", SELF, S3, WD)),
    ("7", "case 2: US+SimSiam (shared predictor, cross view)", "us_simsiam", {},
     (COS, "predictor", SELF, COS, "predictor", BASE, S3, WD)),
    ("7", "SimSiam, projections distilled without a head", "us_simsiam", {"aux_head": "off"},
     (COS, "predictor", SELF, COS, "none", BASE, S3, WD)),
    ("7", "SimSiam, momentum distillation target", "us_simsiam", {"momentum_sub": True},
     (COS, "predictor", SELF, COS, "predictor", MOM, S3, WD)),
    ("7", "US+BYOL (shared predictor)", "us_byol", {},
     (COS, "predictor", MOM, COS, "predictor", MOM, S3, WD)),
    ("7", "BYOL base, new head g for sub-networks", "us_byol", {"aux_head": "new"},
     (COS, "predictor", MOM, COS, "g", MOM, S3, WD)),
    ("7", "US+SimCLR", "us_simclr", {},
     (NT, "none", INB, COS, "none", BASE, S3, WD)),
    ("7", "SimCLR, InfoNCE distillation", "us_simclr", {"distill_loss": "infonce"},
     (NT, "none", INB, NTD, "none", BASE, S3, WD)),
    ("7", "case 9: SimCLR, sub-networks with their own loss", "us_simclr", {"distill_loss": "own"},
     (NT, "none", INB, "own: " + NT, "none", INB, S3, WD)),
    ("7", "Eq. 2 base, base-network target, no head", "us3l", {**T7, "momentum_sub": False, "aux_head": "off"},
     (E2, "none", MOM, COS, "none", BASE, S3, WD)),
    ("7", "Eq. 2 base, momentum target, no head", "us3l", {**T7, "aux_head": "off"},
     (E2, "none", MOM, COS, "none", MOM, S3, WD)),
    ("7", "Eq. 2 base, momentum target, shared head g", "us3l", {**T7, "aux_head": "shared"},
     (E2, "g", MOM, COS, "g", MOM, S3, WD)),
    ("7", "Eq. 2 base, momentum target, new head g (US3L's loss)", "us3l", T7,
     (E2, "none", MOM, COS, "g", MOM, S3, WD)),
    ("7", "Eq. 2 base, InfoNCE distillation, new head g", "us3l", {**T7, "distill_loss": "infonce"},
     (E2, "none", MOM, NTD, "g", MOM, S3, WD)),
    ("7", "Eq. 2 base, sub-networks with their own loss", "us3l",
     {**T7, "distill_loss": "own", "aux_head": "off", "momentum_sub": False},
     (E2, "none", MOM, "own: " + E2, "none", MOM_W, S3, WD)),
    ("7", "S-Net [1, .75, .5, .25], US+SimSiam", "us_simsiam", {"sampler": "snet", "num_widths": 4},
     (COS, "predictor", SELF, COS, "predictor", BASE, "snet n=4", WD)),
    ("7", "S-Net [1, .75, .5, .25], US3L's loss", "us3l", {**T7, "sampler": "snet", "num_widths": 4},
     (E2, "none", MOM, COS, "g", MOM, "snet n=4", WD)),
    ("9", "sandwich of 2 [max, min]", "us3l", {"sampler": "sandwich", "num_widths": 2},
     (E2, "none", MOM, COS, "g", MOM, "sandwich n=2", GR)),
    ("9", "sandwich of 3", "us3l", {"sampler": "sandwich", "num_widths": 3},
     (E2, "none", MOM, COS, "g", MOM, S3, GR)),
    ("9", "sandwich of 4 (US-Net)", "us3l", {"sampler": "sandwich", "num_widths": 4},
     (E2, "none", MOM, COS, "g", MOM, "sandwich n=4", GR)),
    ("9", "no sandwich rule, 3 random widths", "us3l", {"sampler": "random", "num_widths": 3},
     (E2, "none", MOM, COS, "g", MOM, "random n=3", GR)),
    ("9", "no sandwich rule, 4 random widths", "us3l", {"sampler": "random", "num_widths": 4},
     (E2, "none", MOM, COS, "g", MOM, "random n=4", GR)),
    ("9", "dynamic sampling (US3L)", "us3l", {},
     (E2, "none", MOM, COS, "g", MOM, DYN, GR)),
    ("13", "no schedule: full range from the start", "us3l", {"dynamic_stages": [0.25]},
     (E2, "none", MOM, COS, "g", MOM, "dynamic n=3 (0.25)", GR)),
    ("13", "quarters, min 1 / .75 / .5 / .25 (US3L)", "us3l", {},
     (E2, "none", MOM, COS, "g", MOM, DYN, GR)),
    ("13", "max only for the first half, then the full range", "us3l", {"dynamic_stages": [1.0, 0.25]},
     (E2, "none", MOM, COS, "g", MOM, "dynamic n=3 (1/0.25)", GR)),
    ("13", "max only for the first quarter, then the full range", "us3l",
     {"dynamic_stages": [1.0, 0.25, 0.25, 0.25]},
     (E2, "none", MOM, COS, "g", MOM, "dynamic n=3 (1/0.25/0.25/0.25)", GR)),
    ("13", "reversed: full range first, max only last", "us3l", {"dynamic_stages": [0.25, 0.5, 0.75, 1.0]},
     (E2, "none", MOM, COS, "g", MOM, "dynamic n=3 (0.25/0.5/0.75/1)", GR)),
    ("14", "plain weight decay", "us3l", {"regularizer": "weight_decay"},
     (E2, "none", MOM, COS, "g", MOM, DYN, WD)),
    ("14", "alpha 0 (groups, equal decay)", "us3l", {"group_alpha": 0.0},
     (E2, "none", MOM, COS, "g", MOM, DYN, "group alpha=0 G=8 ramp")),
    ("14", "alpha 0.025", "us3l", {"group_alpha": 0.025},
     (E2, "none", MOM, COS, "g", MOM, DYN, "group alpha=0.025 G=8 ramp")),
    ("14", "alpha 0.05 (US3L)", "us3l", {},
     (E2, "none", MOM, COS, "g", MOM, DYN, GR)),
    ("14", "alpha 0.1", "us3l", {"group_alpha": 0.1},
     (E2, "none", MOM, COS, "g", MOM, DYN, "group alpha=0.1 G=8 ramp")),
    ("14", "case 9: alpha -0.05 (later groups decayed more)", "us3l", {"group_alpha": -0.05},
     (E2, "none", MOM, COS, "g", MOM, DYN, "group alpha=-0.05 G=8 ramp")),
    ("14", "4 groups", "us3l", {"groups": 4},
     (E2, "none", MOM, COS, "g", MOM, DYN, "group alpha=0.05 G=4 ramp")),
    ("14", "16 groups", "us3l", {"groups": 16},
     (E2, "none", MOM, COS, "g", MOM, DYN, "group alpha=0.05 G=16 ramp")),
    ("14", "constant alpha from the start (Eq. 5 as written)", "us3l", {"group_schedule": "constant"},
     (E2, "none", MOM, COS, "g", MOM, DYN, "group alpha=0.05 G=8 constant")),
    ("14", "plain L2 to half-way, then full alpha (authors' ImageNet)", "us3l", {"group_schedule": "step"},
     (E2, "none", MOM, COS, "g", MOM, DYN, "group alpha=0.05 G=8 step")),
]
TERMS = ("base", "base_head", "base_target", "sub", "sub_head", "sub_target", "sampler", "regularizer")
SMALL = {"proj_hidden": 32, "proj_dim": 16, "pred_hidden": 16, "aux_hidden": 32}


def _id(row) -> str:
    return f"T{row[0]}: {row[1]}"


@pytest.mark.parametrize("row", ROWS, ids=_id)
def test_row_resolves_to_its_terms(row):
    _, _, preset, keys, expected = row
    assert preset_config(preset, **keys).terms() == dict(zip(TERMS, expected))


@pytest.mark.parametrize("row", ROWS, ids=_id)
def test_row_builds_the_modules_its_terms_need_and_trains(row, one_thread):
    _, _, preset, keys, _ = row
    cfg = preset_config(preset, **keys, **SMALL)
    terms = cfg.terms()
    torch.manual_seed(0)
    model = SSLModel(cfg, "resnet18", "imagenet")
    heads = {terms["base_head"], terms["sub_head"]}
    assert (model.predictor is not None) == ("predictor" in heads)
    assert (model.aux_head is not None) == ("g" in heads)
    assert (model.momentum_encoder is not None) == ("momentum" in terms["base_target"] + terms["sub_target"])
    sampler = cfg.make_sampler(8, (0.25, 1.0), seed=1)
    widths = max((sampler.widths(i) for i in range(8)), key=len)
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(4, 3, 16, 16, generator=g), torch.randn(4, 3, 16, 16, generator=g)
    out = model.train_step(x1, x2, widths, lambda loss: loss.backward())
    assert out.widths == widths and all(math.isfinite(v) for v in out.losses)
    if cfg.regularizer == "group":
        reg = GroupRegularizer(model.backbone, 1e-4, cfg.group_alpha, cfg.groups, ramp_iters=4,
                               schedule=cfg.group_schedule)
        assert reg.alpha_at(8) == cfg.group_alpha


def table() -> str:
    """The rows as a Markdown table: the configuration keys and the terms they resolve to."""
    lines = ["| table | row | config | " + " | ".join(TERMS) + " |", "|" + "---|" * (len(TERMS) + 3)]
    for tab, label, preset, keys, _ in ROWS:
        terms = preset_config(preset, **keys).terms()
        config = ", ".join([f"preset: {preset}", *(f"{k}: {v}" for k, v in keys.items())])
        lines.append(f"| {tab} | {label} | {config} | " + " | ".join(terms[t] for t in TERMS) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
