"""Feature levels numbered and reported as timm's ResNets do, checked level by level against
timm's own resnet50: a neck written for timm's resnet50 drops onto botnet50 unchanged."""
from __future__ import annotations

import pytest
import torch

import botnet

timm = pytest.importorskip("timm")
from torchvision.ops import FeaturePyramidNetwork  # noqa: E402

H, W = 224, 160  # non-square: BoT models take any size


@pytest.fixture(scope="module")
def timm_r50():
    return timm.create_model("resnet50", pretrained=False).eval()


@pytest.mark.parametrize("ours", ["botnet50", "resnet50"])
def test_feature_info_is_timms_resnet50(ours, timm_r50):
    with torch.device("meta"):
        model = botnet.create_model(ours)
    # the same entries, keys and values: num_chs, reduction and module of all five levels
    assert model.feature_info == timm_r50.feature_info
    assert [f["module"] for f in model.feature_info] == ["act1", "layer1", "layer2", "layer3", "layer4"]
    assert [f["reduction"] for f in model.feature_info] == [2, 4, 8, 16, 32]


OUT_INDICES = [None, (1, 2, 3), (2, 3, 4), (0,), (-1,), (-3, -2, -1), (0, 2, 4), (1, -1), 3]


@pytest.mark.parametrize("out_indices", OUT_INDICES, ids=str)
def test_features_only_levels_match_timm(out_indices):
    kw = {} if out_indices is None else {"out_indices": out_indices}
    with torch.device("meta"):
        theirs = timm.create_model("resnet50", features_only=True, **kw)
        ours = timm.create_model("botnet50", features_only=True, **kw)
        same = botnet.create_model("botnet50", features_only=True, **kw)
    for m in (ours, same):
        assert list(m.feature_info.out_indices) == list(theirs.feature_info.out_indices)
        assert m.feature_info.reduction() == theirs.feature_info.reduction()
        assert m.feature_info.channels() == theirs.feature_info.channels()
        assert m.feature_info.module_name() == theirs.feature_info.module_name()
    if out_indices is None:  # timm's default for features_only: every level, the stem included
        assert list(ours.feature_info.out_indices) == [0, 1, 2, 3, 4]
    if out_indices == (1, 2, 3):  # the numbering that differed before: strides 4/8/16 in both
        assert ours.feature_info.reduction() == [4, 8, 16]


def test_features_only_and_forward_intermediates_give_timms_shapes(timm_r50):
    torch.manual_seed(0)
    ours = botnet.create_model("botnet50").eval()
    x = torch.randn(1, 3, H, W)
    with torch.no_grad():
        theirs_final, theirs_maps = timm_r50.forward_intermediates(x)
        final, maps = ours.forward_intermediates(x)
        assert final.shape == theirs_final.shape == (1, 2048, 7, 5)
        assert [t.shape for t in maps] == [t.shape for t in theirs_maps]
        assert [tuple(t.shape[-2:]) for t in maps] == [(112, 80), (56, 40), (28, 20), (14, 10), (7, 5)]
        for indices in ((1, 3), [-2], 2, [0, 4]):
            a = ours.forward_intermediates(x, indices=indices, intermediates_only=True)
            b = timm_r50.forward_intermediates(x, indices=indices, intermediates_only=True)
            assert [t.shape for t in a] == [t.shape for t in b], indices
        # stop_early ends at the last level asked for, in both
        early, (stem,) = ours.forward_intermediates(x, indices=[0], stop_early=True)
        t_early, (t_stem,) = timm_r50.forward_intermediates(x, indices=[0], stop_early=True)
        assert stem.shape == t_stem.shape == (1, 64, 112, 80) and early.shape == t_early.shape == (1, 64, 56, 40)
        # the features_only wrapper returns the same maps as forward_intermediates
        torch.manual_seed(0)
        feat = botnet.create_model("botnet50", features_only=True, out_indices=(0, 2, 4)).eval()
        for got, ref in zip(feat(x), [maps[0], maps[2], maps[4]]):
            torch.testing.assert_close(got, ref, rtol=0, atol=0)


def _timm_fpn(name: str, out_indices: tuple[int, ...]):
    """A neck written against timm's API only: features_only backbone + torchvision FPN sized from
    feature_info. Nothing in it knows which backbone it gets."""
    backbone = timm.create_model(name, features_only=True, out_indices=out_indices).eval()
    fpn = FeaturePyramidNetwork(backbone.feature_info.channels(), out_channels=32).eval()

    def run(x: torch.Tensor) -> list[torch.Tensor]:
        feats = backbone(x)
        return list(fpn({str(i): f for i, f in enumerate(feats)}).values())

    return run, backbone.feature_info.reduction()


@pytest.mark.parametrize("out_indices", [(1, 2, 3), (2, 3, 4)])
def test_an_fpn_neck_for_timms_resnet50_fits_botnet50(out_indices):
    x = torch.randn(1, 3, H, W)
    strides = {}
    for name in ("resnet50", "botnet50"):
        run, declared = _timm_fpn(name, out_indices)
        with torch.no_grad():
            outs = run(x)
        assert all(o.shape[1] == 32 for o in outs)
        measured = [H // o.shape[-2] for o in outs]
        assert measured == [W // o.shape[-1] for o in outs] == declared, name
        strides[name] = measured
    assert strides["botnet50"] == strides["resnet50"] == [2 ** (i + 1) for i in out_indices]
