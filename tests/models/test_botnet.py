"""The model family: exact sizes, torchvision equivalence, any input size, registry, weight transfer."""
from __future__ import annotations

import logging

import pytest
import torch
import torchvision

import botnet
from botnet.models import Bottleneck, MODEL_CFGS
from botnet.models.profile import count_params, profile_model

ALL_MODELS = botnet.list_models()

# Parameter counts with a 1000-class head (paper notes, section 4, [calc] columns).
EXPECTED_PARAMS = {
    "resnet50": 25_557_032, "botnet50": 20_852_008,
    "resnet101": 44_549_160, "botnet101": 39_844_136,
    "resnet152": 60_192_808, "botnet152": 55_487_784,
    "resnet200": 64_673_832, "botnet200": 59_968_808,
    # S1 family, SE only in convolutional blocks (the paper's text) ...
    "botnet_s1_59": 30_500_696, "botnet_s1_110": 51_739_544,
    "botnet_s1_128": 69_131_672, "botnet_s1_77": 47_917_400,
}
# ... and with SE in the BoT blocks too (close to the paper's table: 33.5 / 54.7 / 75.1 / 53.9 M).
EXPECTED_PARAMS_SE_EVERYWHERE = {
    "botnet_s1_59": 33_659_480, "botnet_s1_110": 54_898_328,
    "botnet_s1_128": 75_449_240, "botnet_s1_77": 54_234_968,
}


def _meta_params(name, **kw) -> int:
    with torch.device("meta"):
        return count_params(botnet.create_model(name, **kw))


def test_registry_lists_the_paper_family():
    for name in ["resnet50", "resnet101", "resnet152", "resnet200", "botnet50", "botnet101", "botnet152",
                 "botnet200", "botnet_s1_59", "botnet_s1_77", "botnet_s1_110", "botnet_s1_128", "botnet_mini"]:
        assert name in ALL_MODELS
    assert botnet.list_models("botnet_s1*") == ["botnet_s1_110", "botnet_s1_128", "botnet_s1_59", "botnet_s1_77"]


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_exact_parameter_counts(name):
    assert _meta_params(name) == EXPECTED_PARAMS[name]


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS_SE_EVERYWHERE))
def test_parameter_counts_with_se_in_attention_blocks(name):
    assert _meta_params(name, se_in_attn=True) == EXPECTED_PARAMS_SE_EVERYWHERE[name]


def test_resnet50_matches_torchvision_exactly():
    tv = torchvision.models.resnet50().eval()
    ours = botnet.create_model("resnet50").eval()
    assert count_params(ours) == count_params(tv) == 25_557_032
    ours.load_state_dict(tv.state_dict(), strict=True)
    x = torch.randn(2, 3, 96, 80)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x), rtol=0, atol=0)


def test_multiply_adds_match_the_paper():
    # Backbone at 1024 x 1024: R50 85.4 G and BoT50 103.0 G (paper figure); T3 7.3 G, T7 45.8 G.
    assert profile_model("resnet50", img_size=1024, backbone_only=True).gmacs == pytest.approx(85.4, abs=0.1)
    assert profile_model("botnet50", img_size=1024, backbone_only=True).gmacs == pytest.approx(103.0, rel=0.01)
    t3 = profile_model("botnet_s1_59")
    assert t3.gmacs == pytest.approx(7.3, rel=0.015)
    # the memory-linear path's count (augmented q/k, padded v; docs/models.md): more than the paper's
    assert t3.gmacs_fused == pytest.approx(7.28, abs=0.01) and t3.gmacs_fused > t3.gmacs
    assert profile_model("botnet_s1_128", img_size=384).gmacs == pytest.approx(45.8, rel=0.01)


def test_bot50_attention_sizes_at_1024():
    m = botnet.create_model("botnet50", img_size=1024)
    layers = dict(m.attention_layers())
    assert list(layers) == ["layer4.0.mhsa", "layer4.1.mhsa", "layer4.2.mhsa"]
    assert layers["layer4.0.mhsa"].feat_size == (64, 64) and layers["layer4.0.mhsa"].rel_h.shape == (127, 128)
    assert layers["layer4.1.mhsa"].feat_size == (32, 32) and layers["layer4.2.mhsa"].rel_w.shape == (63, 128)
    assert isinstance(m.layer4[0].pool, torch.nn.AvgPool2d)


def test_s1_family_is_stride_one_with_se_and_silu():
    m = botnet.create_model("botnet_s1_59")
    assert [f["reduction"] for f in m.feature_info] == [2, 4, 8, 16, 16]
    assert all(blk.attn for blk in m.layer4) and len(m.layer4) == 6
    assert all(mod.feat_size == (14, 14) for _, mod in m.attention_layers())
    assert isinstance(m.layer1[0].act1, torch.nn.SiLU)
    assert m.layer1[0].se.fc1.out_channels == 16  # 0.0625 of the 256-channel output
    assert isinstance(m.layer4[0].se, torch.nn.Identity)


# Every registered model, forward and backward at two sizes (one square, one odd and non-square).
@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_backward_at_two_sizes(name):
    small = name == "botnet_mini"
    m = botnet.create_model(name, num_classes=7, img_size=32)
    sizes = [(32, 32), (27, 41)] if small else [(32, 32), (45, 37)]
    for hw in sizes:
        m.zero_grad(set_to_none=True)
        y = m(torch.randn(2, 3, *hw))
        assert y.shape == (2, 7) and torch.isfinite(y).all()
        y.logsumexp(-1).sum().backward()
        for pname, p in m.named_parameters():
            if p.grad is None:
                raise AssertionError(f"{name} at {hw}: no gradient for {pname}")
        # The attention tables get gradient (only bn3 gammas start at 0, so mhsa grads may be 0
        # right at init; check they are defined and finite).
        for _, mod in m.attention_layers():
            assert torch.isfinite(mod.rel_h.grad).all()


@pytest.mark.parametrize("name,strides", [("botnet50", [2, 4, 8, 16, 32]), ("botnet_s1_59", [2, 4, 8, 16, 16])])
def test_feature_maps_have_declared_strides_and_channels(name, strides):
    m = botnet.create_model(name, num_classes=0).eval()
    assert [f["reduction"] for f in m.feature_info] == strides
    assert [f["num_chs"] for f in m.feature_info] == [64, 256, 512, 1024, 2048]
    with torch.no_grad():
        maps = m.forward_feature_maps(torch.randn(1, 3, 96, 128))
    assert list(maps) == [f["module"] for f in m.feature_info] == ["act1", "layer1", "layer2", "layer3", "layer4"]
    for info, (key, t) in zip(m.feature_info, maps.items()):
        assert t.shape == (1, info["num_chs"], -(-96 // info["reduction"]), -(-128 // info["reduction"])), key
    assert m.num_features == 2048 and isinstance(m.fc, torch.nn.Identity)


def test_forward_features_and_head_compose():
    m = botnet.create_model("botnet_mini", num_classes=10, in_chans=1).eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        feats = m.forward_features(x)
        assert feats.shape == (3, m.num_features, 7, 7)
        torch.testing.assert_close(m.forward_head(feats), m(x))
        assert m.forward_head(feats, pre_logits=True).shape == (3, m.num_features)
    m.reset_classifier(5)
    assert m(x).shape == (3, 5)


def test_strided_bot_block_pools_odd_sizes_with_ceil():
    blk = Bottleneck(64, 16, stride=2, attn=True, feat_size=(7, 9)).eval()
    x = torch.randn(1, 64, 7, 9)
    assert blk(x).shape == (1, 64, 4, 5)  # same as the strided 1x1 shortcut: ceil(7/2), ceil(9/2)
    y = torch.randn(1, 16, 7, 9)
    pooled = blk.pool(y)
    torch.testing.assert_close(pooled[..., -1, -1], y[..., -1, -1])  # the corner is averaged alone
    torch.testing.assert_close(pooled[..., 0, 0], y[..., :2, :2].mean((-1, -2)))


def test_model_at_other_size_loads_checkpoint_and_logs(caplog):
    src = botnet.create_model("botnet_mini", num_classes=10, img_size=28).eval()
    dst = botnet.create_model("botnet_mini", num_classes=10, img_size=40).eval()
    with caplog.at_level(logging.WARNING):
        dst.load_state_dict(src.state_dict())
    assert caplog.text.count("resized position table") == 4  # two BoT blocks x (rel_h, rel_w)
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x))


def test_paper_options():
    m = botnet.create_model("botnet50", shortcut_act=True, pos="absolute", num_classes=0)
    assert isinstance(m.layer4[0].downsample[-1], torch.nn.ReLU)
    assert isinstance(m.layer1[0].downsample[-1], torch.nn.ReLU)
    assert m.layer4[1].mhsa.pos == "absolute"
    assert not isinstance(botnet.create_model("botnet50").layer4[0].downsample[-1], torch.nn.ReLU)
    assert all(b.bn3.weight.abs().sum() == 0 for b in m.layer4)  # zero-gamma last BN
    torch.manual_seed(0)
    official = botnet.create_model("botnet50", pos_init="official").layer4[0].mhsa.rel_h
    assert abs(official.mean().item() - 128**-0.5) < 0.02 and abs(official.std().item() - 1) < 0.05
    with pytest.raises(TypeError, match="unknown option"):
        botnet.create_model("botnet50", heads_typo=8)
    with pytest.raises(ValueError, match="unknown model 'botnet51'"):
        botnet.create_model("botnet51")


def test_timm_registry():
    timm = pytest.importorskip("timm")
    m = timm.create_model("botnet50", num_classes=10)
    assert isinstance(m, botnet.ResNet) and m.num_classes == 10
    assert count_params(m) == count_params(botnet.create_model("botnet50", num_classes=10))
    # timm's own resnet50 is untouched; ours is reachable under a prefixed name
    assert not isinstance(timm.create_model("resnet50"), botnet.ResNet)
    assert isinstance(timm.create_model("botnet_resnet50"), botnet.ResNet)
    assert set(botnet.list_models()) <= {n.removeprefix("botnet_") for n in timm.list_models("*")} | set(
        timm.list_models("*")
    )
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("botnet50", pretrained=True)


@pytest.mark.parametrize("fmt", ["pth", "safetensors", "dict"])
def test_load_resnet_weights_from_torchvision_checkpoint(tmp_path, fmt):
    from safetensors.torch import save_file

    tv = torchvision.models.resnet50()
    sd = tv.state_dict()
    if fmt == "pth":
        src = tmp_path / "r50.pth"
        torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, src)  # DDP-wrapped
    elif fmt == "safetensors":
        src = tmp_path / "r50.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(src))
    else:
        src = sd
    m = botnet.create_model("botnet50")
    report = botnet.load_resnet_weights(m, src, verbose=False)
    own = m.state_dict()
    assert sorted(report.unused) == [f"layer4.{i}.conv2.weight" for i in range(3)]
    assert sorted(report.fresh) == sorted(k for k in own if ".mhsa." in k)
    assert len(report.transferred) == len(own) - 9
    for k in report.transferred:
        assert torch.equal(own[k], sd[k]), k
    assert "transferred 317 tensors" in str(report)


class _NotATensor:
    """An arbitrary pickled object: weights_only loading must refuse it."""


def test_load_resnet_weights_refuses_unrelated_and_unsafe_files(tmp_path):
    from botnet.errors import CheckpointError

    m = botnet.create_model("botnet_mini")
    with pytest.raises(CheckpointError, match="no tensor of the checkpoint matches"):
        botnet.load_resnet_weights(m, {"foo.weight": torch.zeros(3)})
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "obj": _NotATensor()}, evil)
    with pytest.raises(CheckpointError, match="tensors only"):
        botnet.load_resnet_weights(m, evil)
    with pytest.raises(CheckpointError, match="not found"):
        botnet.load_resnet_weights(m, tmp_path / "missing.pth")


def test_every_config_builds_on_meta():
    for name in MODEL_CFGS:
        with torch.device("meta"):
            botnet.create_model(name)


def test_jit_trace_matches_eager_at_another_size():
    m = botnet.create_model("botnet_mini", num_classes=10, in_chans=1).eval()
    x28, x36 = torch.randn(2, 1, 28, 28), torch.randn(2, 1, 36, 44)
    with torch.no_grad():
        traced = torch.jit.trace(m, x28)
        torch.testing.assert_close(traced(x28), m(x28), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(traced(x36), m(x36), rtol=1e-5, atol=1e-5)


def test_torch_compile_matches_eager():
    m = botnet.create_model("botnet_mini", num_classes=10, in_chans=1).eval()
    x = torch.randn(2, 1, 28, 28)
    compiled = torch.compile(m, backend="aot_eager", dynamic=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), m(x), rtol=1e-5, atol=1e-5)
        x2 = torch.randn(2, 1, 30, 34)
        torch.testing.assert_close(compiled(x2), m(x2), rtol=1e-5, atol=1e-5)


def test_torchvision_fpn_extractor_accepts_our_backbone():
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor

    m = botnet.create_model("botnet50", num_classes=0, img_size=128).eval()
    fpn = _resnet_fpn_extractor(m, trainable_layers=3).eval()
    x = torch.randn(1, 3, 128, 96)
    with torch.no_grad():
        out = fpn(x)
        maps = m.forward_feature_maps(x)
    assert [t.shape[-2:] for t in out.values()][:4] == [t.shape[-2:] for t in maps.values()][1:]
    assert all(t.shape[1] == 256 for t in out.values())
    # The extractor runs the children in order: its body must reproduce our layer4 exactly.
    with torch.no_grad():
        torch.testing.assert_close(fpn.body(x)["3"], maps["layer4"])
    assert not m.layer1[0].conv1.weight.requires_grad and m.layer4[0].conv1.weight.requires_grad


def test_stride_2_stem_skips_the_full_resolution_maps():
    """botnet_mini with stem_stride=2 and strides [1, 2, 2, 1]: the stem conv runs at 14x14 for a 28 px
    image, the stages keep the same sizes after layer1 (14, 7, 4, 4) and the BoT tables fit 4x4 tokens."""
    m = botnet.create_model("botnet_mini", num_classes=10, in_chans=1, stem_stride=2, strides=[1, 2, 2, 1]).eval()
    assert m.conv1.stride == (2, 2)
    assert [f["reduction"] for f in m.feature_info] == [2, 2, 4, 8, 8]  # no max-pool: the stem map is layer1's size
    with torch.no_grad():
        maps = m.forward_feature_maps(torch.randn(1, 1, 28, 28))
    assert [tuple(t.shape[-2:]) for t in maps.values()] == [(14, 14), (14, 14), (7, 7), (4, 4), (4, 4)]
    for _, mod in m.attention_layers():
        assert mod.rel_h.shape[0] == 2 * 4 - 1
    for bad in ({"stem_stride": 3}, {"stem_stride": 2, "stem_kernel": 7}):
        with pytest.raises(ValueError, match="stem_stride"):
            botnet.create_model("botnet_mini", **bad)
