"""timm's model contract for our registered models, checked through ``timm.create_model``.

The properties timm's own suite (pytorch-image-models tests/test_models.py) checks for every model:
forward, backward, pretrained/default config, TorchScript, features_only, forward_intermediates and
torch.fx tracing, written here for our models at small sizes (the big models run at 64 px or on the
meta device). Plus what the registration itself promises: the public registry, the names, the
same model as ``botnet.create_model``, no pretrained weights.
"""
from __future__ import annotations

import math

import pytest
import torch

import botnet
from botnet.models import MODEL_CFGS, TIMM_NAMES

timm = pytest.importorskip("timm")

# The timm names of the models the contract runs on: the detection backbone, an ImageNet S1 model,
# the small demo model and the ResNet baseline (joined as botnet_resnet50, timm owns resnet50).
CONTRACT = ["botnet50", "botnet_s1_59", "botnet_mini", "botnet_resnet50"]
BOT = ["botnet50", "botnet_s1_59", "botnet_mini"]
ALL_TIMM = sorted(TIMM_NAMES.values())
# Input for the checks that compute: the demo size for mini, 64 px (non-square below) for the rest.
SMALL = {"botnet_mini": (3, 28, 28)}


def _small(name: str, *, odd: bool = False) -> tuple[int, int, int]:
    c, h, w = SMALL.get(name, (3, 64, 64))
    return (c, h + 5, w - 7) if odd else (c, h, w)


def _sizes(model) -> tuple[tuple[int, int], ...]:
    return tuple((i["num_chs"], i["reduction"]) for i in model.feature_info)


# --------------------------------------------------------------------------- registry
def test_every_model_is_in_timms_public_registry():
    assert set(ALL_TIMM) <= set(timm.list_models("*"))
    assert TIMM_NAMES["resnet50"] == "botnet_resnet50" and TIMM_NAMES["botnet50"] == "botnet50"
    # listed under our module, with a registered config, and never as having weights
    assert set(timm.list_models(module="botnet")) == set(ALL_TIMM)
    assert set(ALL_TIMM) <= set(timm.list_models(name_matches_cfg=True))
    assert not set(ALL_TIMM) & set(timm.list_models(pretrained=True))
    for name in ALL_TIMM:
        assert timm.models.get_pretrained_cfg_value(name, "input_size") is not None, name
        assert timm.models.get_pretrained_cfg(name).architecture == name
    # timm's own ResNet-50 is still timm's
    assert timm.models.model_entrypoint("resnet50").__module__ == "timm.models.resnet"


@pytest.mark.parametrize("name", botnet.list_models())
def test_timm_and_botnet_build_the_same_model(name):
    tname = TIMM_NAMES[name]
    with torch.device("meta"):
        ours = botnet.create_model(name, num_classes=10, img_size=96)
        theirs = timm.create_model(tname, num_classes=10, img_size=96)
    assert type(ours) is type(theirs) is botnet.ResNet
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [(k, v.shape) for k, v in theirs.state_dict().items()]
    assert ours.pretrained_cfg == theirs.pretrained_cfg
    assert ours.pretrained_cfg["architecture"] == tname and ours.botnet_arch == name
    # the architecture name builds the model again, in either registry
    assert botnet.create_model(tname, num_classes=0).botnet_arch == name


def test_same_weights_from_both_registries_and_botnet_arch_is_settable():
    torch.manual_seed(3)
    ours = botnet.create_model("botnet_mini", num_classes=10)
    torch.manual_seed(3)
    theirs = timm.create_model("botnet_mini", num_classes=10)
    for (k, a), (k2, b) in zip(ours.state_dict().items(), theirs.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b), k
    ours.botnet_arch = "resnet50"  # code that tags models (training) still can
    assert ours.pretrained_cfg["architecture"] == "botnet_resnet50" and ours.botnet_arch == "resnet50"


def test_no_published_weights_but_own_file_loads_through_timm(tmp_path):
    with pytest.raises(ValueError, match="no pretrained weights are published"):
        timm.create_model("botnet_mini", pretrained=True)
    src = timm.create_model("botnet_mini", num_classes=10)
    path = tmp_path / "mini.pth"
    torch.save(src.state_dict(), path)
    m = timm.create_model("botnet_mini", pretrained=True, pretrained_cfg_overlay=dict(file=str(path), num_classes=10))
    for k, v in src.state_dict().items():
        assert torch.equal(m.state_dict()[k], v), k
    assert m.pretrained_cfg["file"] == str(path)


def test_device_and_dtype_arguments():
    m = timm.create_model("botnet_mini", device="meta", dtype=torch.float64)
    assert {p.device.type for p in m.parameters()} == {"meta"}
    assert {p.dtype for p in m.parameters()} == {torch.float64}
    with torch.no_grad():
        y = timm.create_model("botnet_mini", num_classes=3, dtype=torch.float64)(torch.randn(1, 3, 28, 28, dtype=torch.float64))
    assert y.dtype == torch.float64 and y.shape == (1, 3)


def test_unknown_and_misplaced_arguments_are_errors():
    with pytest.raises(TypeError, match="unknown option"):
        timm.create_model("botnet50", heads_typo=8)
    with pytest.raises(TypeError, match="out_indices needs features_only=True"):
        timm.create_model("botnet_mini", out_indices=(1, 2))


# --------------------------------------------------------------------------- default config
@pytest.mark.parametrize("name", ALL_TIMM)
def test_default_cfg_describes_the_model(name):
    # timm's test_model_default_cfgs at the model's own input size, on the meta device (shapes only)
    with torch.device("meta"):
        m = timm.create_model(name).eval()
        cfg = m.default_cfg
        assert cfg is m.pretrained_cfg
        for key in ("input_size", "mean", "std", "crop_pct", "interpolation", "num_classes", "pool_size",
                    "first_conv", "classifier", "architecture"):
            assert cfg.get(key) is not None, key
        assert cfg["num_classes"] == m.num_classes == 1000 and cfg["architecture"] == name
        assert len(cfg["mean"]) == len(cfg["std"]) == cfg["input_size"][0] == 3
        size = MODEL_CFGS[botnet.models.resolve_name(name)].img_size
        assert cfg["input_size"][1:] == cfg["img_size"] == (size, size)
        sd = m.state_dict()
        assert cfg["first_conv"] + ".weight" in sd and cfg["classifier"] + ".weight" in sd
        assert m.num_features > 0 and m.head_hidden_size == m.num_features

        x = torch.empty(1, *cfg["input_size"])
        feats = m.forward_features(x)
        assert feats.shape == (1, m.num_features, *cfg["pool_size"])
        assert m.forward_head(feats, pre_logits=True).shape == (1, m.head_hidden_size)
        assert m(x).shape == (1, 1000)
        m.reset_classifier(0)
        assert m.num_classes == 0 and m(x).shape == (1, m.head_hidden_size)
        m.reset_classifier(0, "")
        assert m(x).shape == (1, m.num_features, *cfg["pool_size"])
        unpooled = timm.create_model(name, num_classes=0, global_pool="").eval()
        assert unpooled(x).shape == (1, m.num_features, *cfg["pool_size"])


def test_pretrained_cfg_follows_the_instance():
    m = timm.create_model("botnet_mini", in_chans=1, img_size=40, num_classes=10)
    cfg = m.pretrained_cfg
    assert cfg["input_size"] == (1, 40, 40) and cfg["img_size"] == (40, 40) and cfg["pool_size"] == (10, 10)
    assert cfg["mean"] == (0.5,) and cfg["std"] == (0.5,) and cfg["num_classes"] == 10
    m.reset_classifier(3)
    assert m.pretrained_cfg["num_classes"] == 3
    gray = botnet.create_model("botnet50", in_chans=1)
    assert gray.pretrained_cfg["mean"] == pytest.approx((sum((0.485, 0.456, 0.406)) / 3,))
    # timm's data pipeline reads it
    data = timm.data.resolve_data_config(model=m)
    assert data["input_size"] == (1, 40, 40) and data["mean"] == (0.5,) and data["crop_pct"] == 1.0
    assert data["interpolation"] == "bicubic"
    from PIL import Image

    t = timm.data.create_transform(**data)
    assert t(Image.new("L", (50, 60))).shape == (1, 40, 40)


def test_head_pooling_options():
    m = timm.create_model("botnet_mini", num_classes=5, global_pool="catavgmax").eval()
    assert m.head_hidden_size == 2 * m.num_features and m.fc.in_features == 2 * m.num_features
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        feats = m.forward_features(x)
        pre = m.forward_head(feats, pre_logits=True)
        torch.testing.assert_close(pre, torch.cat([feats.mean((2, 3)), feats.amax((2, 3))], 1))
        torch.testing.assert_close(m(x), m.fc(pre))
    with pytest.raises(ValueError, match="no pooling.*needs num_classes=0"):
        timm.create_model("botnet_mini", num_classes=5, global_pool="")
    with pytest.raises(ValueError, match="no pooling.*needs num_classes=0"):
        m.reset_classifier(3, "")


# --------------------------------------------------------------------------- forward / backward
@pytest.mark.parametrize("name", CONTRACT)
def test_forward_and_grad_checkpointing_give_the_same_output(name):
    m = timm.create_model(name).eval()
    x = torch.randn(1, *_small(name, odd=True))
    with torch.no_grad():
        y = m(x)
        assert y.shape == (1, 1000) and not torch.isnan(y).any()
        m.set_grad_checkpointing()
        assert m.grad_checkpointing
        torch.testing.assert_close(m(x), y, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", CONTRACT)
def test_backward_reaches_every_parameter(name):
    m = timm.create_model(name, num_classes=42).train()
    out = m(torch.randn(2, *_small(name)))
    assert out.shape == (2, 42) and not torch.isnan(out).any()
    out.mean().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None]
    assert not missing
    # encoder only: the unpooled map has num_features channels
    enc = timm.create_model(name, num_classes=0, global_pool="").train()
    feats = enc(torch.randn(2, *_small(name)))
    assert feats.dim() == 4 and feats.shape[1] == enc.num_features
    feats.mean().backward()
    assert all(p.grad is not None for p in enc.parameters())


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    m = timm.create_model("botnet_mini", num_classes=10, drop_rate=0.0).train()
    # zero-init last BN gammas would leave the attention branches without gradient: give them some
    for name, p in m.named_parameters():
        if name.endswith("bn3.weight"):
            torch.nn.init.constant_(p, 0.5)
    x = torch.randn(2, 3, 28, 28)

    def grads():
        m.zero_grad(set_to_none=True)
        m(x).logsumexp(-1).sum().backward()
        return {n: p.grad.clone() for n, p in m.named_parameters()}

    ref = grads()
    m.set_grad_checkpointing(True)
    ckpt = grads()
    for n in ref:
        torch.testing.assert_close(ckpt[n], ref[n], rtol=1e-4, atol=1e-6, msg=n)
    assert ref["layer4.1.mhsa.rel_h"].abs().sum() > 0


def test_group_matcher_drives_timms_layer_decay():
    m = timm.create_model("botnet_mini", num_classes=10)
    groups = timm.models.group_parameters(m, m.group_matcher())
    names = [n for g in groups.values() for n in g]
    assert sorted(names) == sorted(n for n, _ in m.named_parameters())
    assert groups[0] == ["conv1.weight", "bn1.weight", "bn1.bias"]
    assert len(groups) == 1 + sum(len(getattr(m, f"layer{i}")) for i in range(1, 5)) + 1  # stem, blocks, head
    coarse = timm.models.group_parameters(m, m.group_matcher(coarse=True))
    assert len(coarse) == 1 + 4 + 1
    from timm.optim import create_optimizer_v2

    opt = create_optimizer_v2(m, "sgd", lr=0.1, layer_decay=0.5)
    scales = sorted({g["lr_scale"] for g in opt.param_groups})
    assert scales[-1] == 1.0 and scales[0] < 0.01  # the stem learns slowest


# --------------------------------------------------------------------------- TorchScript
@pytest.mark.parametrize("name", CONTRACT)
def test_torchscript(name):
    with timm.layers.set_scriptable(True):
        m = timm.create_model(name).eval()
    scripted = torch.jit.script(m)
    x = torch.randn(1, *_small(name))
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), m(x))


# --------------------------------------------------------------------------- features
@pytest.mark.parametrize("name", CONTRACT)
def test_features_only_returns_the_stage_maps(name):
    torch.manual_seed(1)
    feat = timm.create_model(name, features_only=True).eval()
    torch.manual_seed(1)
    full = timm.create_model(name).eval()
    assert isinstance(feat, timm.models.FeatureListNet)
    assert feat.feature_info.channels() == [c for c, _ in _sizes(full)]
    assert feat.feature_info.reduction() == [r for _, r in _sizes(full)]
    assert feat.feature_info.module_name() == ["act1", "layer1", "layer2", "layer3", "layer4"]  # timm's resnet levels
    # the same modules with the same keys, without the head
    own = set(full.state_dict())
    assert set(feat.state_dict()) == {k for k in own if not k.startswith("fc.")}
    assert "num_classes" not in feat.pretrained_cfg and feat.pretrained_cfg["architecture"] == name

    c, h, w = _small(name, odd=True)
    x = torch.randn(1, c, h, w)
    with torch.no_grad():
        outs = feat(x)
        ref = full.forward_intermediates(x, intermediates_only=True)
    assert len(outs) == 5
    for o, r, (chs, red) in zip(outs, ref, _sizes(full)):
        assert o.shape == (1, chs, math.ceil(h / red), math.ceil(w / red))
        torch.testing.assert_close(o, r, rtol=0, atol=0)


@pytest.mark.parametrize(
    "out_indices,levels", [((1, 3), [1, 3]), ((-1,), [4]), (2, [3, 4]), ([0], [0]), ((0, -2), [0, 3])]
)
def test_out_indices_select_stages(out_indices, levels):
    torch.manual_seed(0)
    feat = timm.create_model("botnet_mini", features_only=True, out_indices=out_indices).eval()
    torch.manual_seed(0)
    full = timm.create_model("botnet_mini").eval()
    names = ["act1", "layer1", "layer2", "layer3", "layer4"]
    assert feat.feature_info.module_name() == [names[i] for i in levels]
    x = torch.randn(2, 3, 28, 36)
    with torch.no_grad():
        outs = feat(x)
        maps = list(full.forward_feature_maps(x).values())
    assert len(outs) == len(levels)
    for o, i in zip(outs, levels):
        torch.testing.assert_close(o, maps[i], rtol=0, atol=0)
    # the same through botnet.create_model
    same = botnet.create_model("botnet_mini", features_only=True, out_indices=out_indices)
    assert same.feature_info.channels() == feat.feature_info.channels()


@pytest.mark.parametrize("bad", [(5,), (0, 5), (-6,), 0, 6])
def test_out_of_range_out_indices_are_a_clear_error(bad):
    with pytest.raises(ValueError, match=r"bad out_indices .*the feature levels are 0: act1 \(the stem\), 1: layer1, "
                                         r"2: layer2, 3: layer3, 4: layer4"):
        timm.create_model("botnet50", features_only=True, out_indices=bad)


def test_other_feature_wrappers():
    x = torch.randn(1, 3, 28, 28)
    torch.manual_seed(0)
    full = timm.create_model("botnet_mini").eval()
    with torch.no_grad():
        maps = list(full.forward_feature_maps(x).values())
    for cls in ("dict", "hook", "getter"):
        torch.manual_seed(0)
        feat = timm.create_model("botnet_mini", features_only=True, feature_cls=cls, out_indices=(0, 3)).eval()
        with torch.no_grad():
            outs = feat(x)
        outs = list(outs.values()) if isinstance(outs, dict) else outs
        assert len(outs) == 2, cls
        torch.testing.assert_close(outs[0], maps[0], rtol=0, atol=0, msg=cls)
        torch.testing.assert_close(outs[1], maps[3], rtol=0, atol=0, msg=cls)
        if cls == "getter":  # pruned after layer3: no attention block, no head left
            assert not feat.model.attention_layers() and len(feat.model.layer4) == 0
            assert isinstance(feat.model.fc, torch.nn.Identity)


@pytest.mark.parametrize("name", CONTRACT)
def test_forward_intermediates(name):
    m = timm.create_model(name).eval()
    info = timm.models.FeatureInfo(m.feature_info, len(m.feature_info))
    c, h, w = _small(name, odd=True)
    x = torch.randn(1, c, h, w)
    with torch.no_grad():
        final, inter = m.forward_intermediates(x)
        torch.testing.assert_close(final, m.forward_features(x), rtol=0, atol=0)
        assert len(inter) == len(info.channels()) == 5
        for o, chs, red in zip(inter, info.channels(), info.reduction()):
            assert o.shape == (1, chs, math.ceil(h / red), math.ceil(w / red))
        last2 = m.forward_intermediates(x, indices=2, intermediates_only=True)
        assert [t.shape for t in last2] == [t.shape for t in inter[-2:]]
        early, (only,) = m.forward_intermediates(x, indices=[1], stop_early=True)
        torch.testing.assert_close(early, inter[1], rtol=0, atol=0)
        torch.testing.assert_close(only, inter[1], rtol=0, atol=0)
        m.set_grad_checkpointing()
        torch.testing.assert_close(m.forward_intermediates(x)[0], final, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="output_fmt"):
        m.forward_intermediates(x, output_fmt="NHWC")


def test_prune_intermediate_layers():
    m = timm.create_model("botnet_mini").eval()
    x = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        ref = m.forward_intermediates(x, intermediates_only=True)
        assert m.prune_intermediate_layers([1, -3]) == [1, 2]
        assert m.num_features == m.head_hidden_size == m.feature_info[2]["num_chs"] and m.num_classes == 0
        assert len(m.layer3) == len(m.layer4) == 0 and not m.attention_layers()
        torch.testing.assert_close(m.forward_features(x), ref[2], rtol=0, atol=0)
        torch.testing.assert_close(m(x), ref[2], rtol=0, atol=0)  # no pooling, no classifier left


def test_pruning_to_the_stem_matches_timms_resnet():
    """Level 0 alone: every stage goes, and the max-pool after the stem too, as in timm's resnet50."""
    x = torch.randn(1, 3, 64, 48)
    shapes = []
    for name in ("botnet_resnet50", "resnet50"):  # ours, then timm's own
        m = timm.create_model(name).eval()
        assert m.prune_intermediate_layers([0]) == [0]
        assert isinstance(m.maxpool, torch.nn.Identity) and all(len(getattr(m, f"layer{i}")) == 0 for i in range(1, 5))
        assert m.num_features == 64 and m.num_classes == 0
        with torch.no_grad():
            shapes.append(tuple(m(x).shape))
    assert shapes[0] == shapes[1] == (1, 64, 32, 24)


# --------------------------------------------------------------------------- torch.fx
def _fx_model(model):
    """timm's FX feature extractor of the model's output node (its test_models helper, in short)."""
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    kw = dict(leaf_modules=timm.models.get_notrace_modules(), autowrap_functions=timm.models.get_notrace_functions())
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=kw)
    return create_feature_extractor(
        model, train_return_nodes=[train_nodes[-1]], eval_return_nodes=[eval_nodes[-1]], tracer_kwargs=kw
    )


@pytest.mark.parametrize("name", CONTRACT)
def test_fx_forward_matches_eager(name):
    m = timm.create_model(name).eval()
    x = torch.randn(1, *_small(name, odd=True))
    with torch.no_grad():
        y = m(x)
        fx = _fx_model(m)
        (out,) = fx(x).values()
    assert torch.equal(out, y) and not torch.isnan(y).any()


@pytest.mark.parametrize("name", CONTRACT)
def test_fx_backward_reaches_every_parameter(name):
    m = timm.create_model(name, num_classes=42).train()
    fx = _fx_model(m)
    (out,) = fx(torch.randn(2, *_small(name))).values()
    assert out.shape == (2, 42)
    out.mean().backward()
    assert all(p.grad is not None for p in fx.parameters())
    assert sum(p.numel() for p in fx.parameters()) == sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name", ["botnet_mini", "botnet_resnet50"])
def test_fx_graph_scripts(name):
    with timm.layers.set_scriptable(True):
        m = timm.create_model(name).eval()
    scripted = torch.jit.script(_fx_model(m))
    x = torch.randn(1, *_small(name))
    with torch.no_grad():
        (out,) = scripted(x).values()
        torch.testing.assert_close(out, m(x))


def test_plain_fx_symbolic_trace_records_the_attention_as_one_call():
    """torch.fx.symbolic_trace without timm's leaf lists: the layer's function is one graph node."""
    m = timm.create_model("botnet_mini", num_classes=5).eval()
    gm = torch.fx.symbolic_trace(m)
    calls = [n for n in gm.graph.nodes if n.op == "call_function" and n.target.__name__ == "rel_pos_attention"]
    assert len(calls) == len(m.attention_layers()) == 2
    x = torch.randn(2, *_small("botnet_mini", odd=True))
    with torch.no_grad():
        assert torch.equal(gm(x), m(x))
