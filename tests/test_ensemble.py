"""Ensembles (beyond the paper): members as configs of their own, their maps normalised and fused."""

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from dfr.planning import keys, plan
from dfr.planning import config as dfr_config
from dfr.stages import ensemble
from dfr.io import DFRError
from dfr.stages.scoring import MAP_COLUMNS, Maps, maps_params, write_maps

BASE = {"datasets": {"s": {"kind": "synthetic", "categories": ["disc"]}},
        "features": {"backbone": "tf_efficientnet_lite0", "layers": ["blocks[2]", "blocks[4]"]}}


def _cfg(members):
    return dfr_config.validate({**BASE, "ensemble": {"members": members}})


def test_members_are_configs_with_their_own_keys_and_a_shared_split():
    cfg = _cfg([{}, {"data.image_size": 448}, {"cae": {"seed": 7}}])
    ms = plan.members(cfg)
    assert [m["data"]["image_size"] for m in ms] == [224, 448, 224]
    assert ms[2]["cae"]["seed"] == 7 and keys.model_params(ms[2])["seed"] == 7
    kv = [plan.key_values(m) for m in ms]
    assert len({k["mkey"] for k in kv}) == 3  # three models...
    assert len({k["skey"] for k in kv}) == 1  # ...of one split: the same validation images
    assert kv[0]["fkey"] == kv[2]["fkey"] != kv[1]["fkey"]  # a CAE seed shares the feature cache
    single = dfr_config.validate(BASE)
    assert kv[0]["mkey"] == keys.model_key(single)  # the first member is the single model, shared
    # the experiment scores the fused maps under the ensemble's key; its training curve is the first member's
    p, p0 = plan.paths(cfg, "s", "disc"), plan.paths(ms[0], "s", "disc")
    ekey = plan.key_values(cfg, "s", "disc")["ekey"]
    assert ekey.startswith("ens3-") and p["maps"].endswith(f"/{ekey}/maps.h5") and p["history"] == p0["history"]
    assert plan.key_values(single)["ekey"] == "" and "ensemble_maps" not in plan.paths(single, "s", "disc")
    # the key follows the members and their order
    assert plan.key_values(_cfg([{}, {"data.image_size": 448}]))["ekey"] != ekey
    assert keys.fusion_params(ms)["members"] == [k["mkey"] for k in kv]


@pytest.mark.parametrize("members, message", [
    ([{}], "at least two members"),
    ([{}, {"seed": 1}], r"members\[1\]: seed: a member may change only the model"),
    ([{}, {"data.val_fraction": 0.3}], r"data.val_fraction: a member may change only"),
    ([{}, {"scoring.top_k": 3}], r"scoring.top_k: a member may change only"),
    ([{}, {"features.batch_size": 2}], "changes only how fast"),
    ([{}, {"cae.epochs": 50}], "members 0 and 1 make the same model"),  # 50 is the default
    ([{}, {"cae.kernel": 5}], r"ensemble.members\[1\]: invalid configuration\n  cae.kernel: 5 is not one of"),
    ([{}, {"cae": {"seed": -1.5}}], r"cae.seed: -1.5 is not of type"),
])
def test_bad_members_fail_naming_the_member_and_key(members, message):
    with pytest.raises(DFRError, match=message):
        plan.members(_cfg(members))


def test_members_must_be_a_list_of_mappings():
    with pytest.raises(DFRError, match="ensemble.members: 'x' is not of type 'array'"):
        _cfg("x")
    with pytest.raises(DFRError, match="ensemble: Additional properties are not allowed"):
        dfr_config.validate({**BASE, "ensemble": {"members": [], "weights": [1, 2]}})


def _maps(path, A, splits, ids=None):
    n = len(A)
    meta = pd.DataFrame({"image_id": ids or [f"img{i}" for i in range(n)], "split": splits,
                         "label": [0 if s == "val" else 1 for s in splits], "defect": "x", "path": "p",
                         "mask_path": "", "height": 64, "width": 64}, columns=MAP_COLUMNS)
    write_maps(path, A, meta, {})
    return str(path)


def test_fuse_z_scores_each_member_by_its_calibration_maps_at_the_finest_grid(tmp_path):
    rng = np.random.default_rng(0)
    splits = ["val"] * 5 + ["test"] * 4
    a = rng.normal(5, 2, (9, 4, 4)).astype(np.float32)  # a coarse member on one scale
    b = rng.normal(100, 30, (9, 8, 8)).astype(np.float32)  # a fine member on another
    pa, pb = _maps(tmp_path / "a.h5", a, splits), _maps(tmp_path / "b.h5", b, splits)
    out = tmp_path / "fused.h5"
    fused = ensemble.fuse([pa, pb], out, {"members": ["a", "b"]})
    # the first 3 of the 5 held-out normal images calibrate; the other 2 are left to the thresholds
    za = (a - a[:3].mean()) / a[:3].std()
    zb = (b - b[:3].mean()) / b[:3].std()
    za8 = F.interpolate(torch.from_numpy(za)[:, None], size=(8, 8), mode="bilinear", align_corners=False)[:, 0]
    np.testing.assert_allclose(fused, (za8.numpy() + zb) / 2, rtol=1e-5, atol=1e-5)
    m = Maps(out)  # an ordinary maps file: scoring and metrics read it like a single model's
    assert m.A.shape == (9, 8, 8) and list(m.meta.image_id) == [f"img{i}" for i in range(9)]
    assert list(m.meta.split) == ["calib"] * 3 + ["val"] * 2 + ["test"] * 4  # no image both calibrates and sets T
    assert maps_params(out)["calibration"] == ["img0", "img1", "img2"]
    # each member's calibration maps now have mean 0 and std 1, so the fused ones are near 0
    assert abs(float(fused[:3].mean())) < 1e-5


def test_fuse_refuses_members_of_other_images_or_without_validation(tmp_path):
    A = np.random.default_rng(0).normal(size=(6, 4, 4)).astype(np.float32)
    splits = ["val"] * 4 + ["test"] * 2
    pa = _maps(tmp_path / "a.h5", A, splits)
    pb = _maps(tmp_path / "b.h5", A, splits, ids=["img0", "img1", "img2", "img3", "img4", "other"])
    with pytest.raises(DFRError, match=r"b.h5: its images or their split differ from .*a.h5"):
        ensemble.fuse([pa, pb], tmp_path / "o.h5", {})
    pc = _maps(tmp_path / "c.h5", A, ["val"] * 3 + ["test"] * 3)
    with pytest.raises(DFRError, match=r"3 validation map\(s\); an ensemble needs at least four held-out normal "
                                       r"images, half to normalise the members by and half to set the thresholds"):
        ensemble.fuse([pc, pc], tmp_path / "o.h5", {})
    pd_ = _maps(tmp_path / "d.h5", np.ones((6, 4, 4), np.float32), splits)
    with pytest.raises(DFRError, match=r"d.h5: its maps of the calibration images are constant"):
        ensemble.fuse([pa, pd_], tmp_path / "o.h5", {})
    assert not (tmp_path / "o.h5").exists()  # nothing half-written
