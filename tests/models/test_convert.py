"""The public BoT block and botnet_from_resnet: BoT50 from torchvision's and timm's ResNet-50, as
the paper built it (c5's three 3x3 convs replaced by relative-position MHSA, nothing else)."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.resnet import Bottleneck as TvBottleneck

import botnet
from botnet.layers import RelPosMHSA
from botnet.models import BoTBlock, botnet_from_resnet

R50_PARAMS = 25_557_032  # torchvision resnet50
BOT50_PARAMS = 20_852_008  # the issue's count, and botnet50's (1000-class head, tables for 224 px)


def _count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _randomise_bn(model: nn.Module) -> None:
    """Non-trivial BN statistics and affine parameters, so a wrong module order shows in the output."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)


def test_torchvision_resnet50_becomes_bot50():
    torch.manual_seed(0)
    src = torchvision.models.resnet50(weights=None)
    before = {k: v.clone() for k, v in src.state_dict().items()}
    model, report = botnet_from_resnet(src)

    assert _count(model) == BOT50_PARAMS and _count(src) == R50_PARAMS  # the source is left as it was
    sd = model.state_dict()
    assert report.removed == [f"layer4.{j}.conv2.weight" for j in range(3)]
    assert sorted(report.new) == sorted(f"layer4.{j}.mhsa.{n}" for j in range(3) for n in ("qkv.weight", "rel_h", "rel_w"))
    assert set(report.kept) == set(before) - set(report.removed) == set(sd) - set(report.new)
    for k in report.kept:  # every non-attention weight and statistic equal to the source's
        assert torch.equal(sd[k], before[k]), k
    assert report.attention_sizes == {"layer4.0": (14, 14), "layer4.1": (7, 7), "layer4.2": (7, 7)}
    assert [type(b) for b in model.layer4] == [BoTBlock] * 3 and isinstance(model, torchvision.models.ResNet)
    # the paper's count: R50 - three 3x3 convs (512*512*9) + three q/k/v (512*1536) + tables (2H-1, 128)
    assert BOT50_PARAMS == R50_PARAMS - 3 * 512 * 512 * 9 + 3 * 512 * 1536 + 128 * (2 * 27 + 4 * 13)

    # The same network as our registered botnet50: same keys and shapes (strict load), same outputs.
    _randomise_bn(model)
    ours = botnet.create_model("botnet50")
    assert _count(ours) == BOT50_PARAMS
    ours.load_state_dict(model.state_dict(), strict=True)
    model.eval(), ours.eval()
    with torch.no_grad():
        for hw in ((224, 224), (200, 152)):  # runs at any size, non-square included
            x = torch.randn(1, 3, *hw)
            y = model(x)
            assert y.shape == (1, 1000) and torch.isfinite(y).all()
            torch.testing.assert_close(y, ours(x), rtol=1e-5, atol=1e-5)


def test_timm_resnet50_becomes_bot50():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    src = timm.create_model("resnet50", pretrained=False)
    before = {k: v.clone() for k, v in src.state_dict().items()}
    model, report = botnet_from_resnet(src, inplace=True)
    assert model is src and _count(model) == BOT50_PARAMS
    assert len(report.removed) == 3 and len(report.new) == 9
    sd = model.state_dict()
    assert all(torch.equal(sd[k], before[k]) for k in report.kept) and len(report.kept) == len(before) - 3
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 96, 160)).shape == (1, 1000)
        # timm's own feature API still runs over the converted stage
        assert [t.shape[1] for t in model.forward_intermediates(torch.randn(1, 3, 64, 96), intermediates_only=True)] \
            == [64, 256, 512, 1024, 2048]


def _tv_block(in_chs: int, planes: int, stride: int) -> TvBottleneck:
    down = nn.Sequential(nn.Conv2d(in_chs, planes * 4, 1, stride=stride, bias=False), nn.BatchNorm2d(planes * 4))
    return TvBottleneck(in_chs, planes, stride=stride, downsample=down)


@pytest.mark.parametrize("stride", [1, 2])
def test_converted_block_is_the_papers_bot_block(stride):
    """The block's output against the paper notes' formula, written out from the source's modules."""
    torch.manual_seed(0)
    tv = _tv_block(32, 16, stride)
    _randomise_bn(tv)
    tv.double()
    bot = BoTBlock.from_bottleneck(tv, feat_size=(6, 5), heads=4).eval()
    assert bot.conv1 is tv.conv1 and bot.bn2 is tv.bn2 and bot.downsample is tv.downsample
    assert bot.mhsa.qkv.weight.dtype == torch.float64  # the block's dtype
    x = torch.randn(2, 32, 6, 5, dtype=torch.float64)
    with torch.no_grad():
        y = torch.relu(tv.bn1(tv.conv1(x)))
        y = bot.mhsa(y)  # attention at the input resolution, then the 2x2 pool in a strided block
        if stride == 2:
            y = nn.functional.avg_pool2d(y, 2, 2, ceil_mode=True, count_include_pad=False)
        y = tv.bn3(tv.conv3(torch.relu(tv.bn2(y))))
        want = torch.relu(y + tv.downsample(x))
        torch.testing.assert_close(bot(x), want, rtol=1e-10, atol=1e-12)
    assert bot(x).shape == (2, 64, 3 if stride == 2 else 6, 3 if stride == 2 else 5)


def test_bot_block_standalone():
    torch.manual_seed(0)
    block = BoTBlock(1024, 512, stride=2, feat_size=14)
    ref = botnet.create_model("botnet50").layer4[0]
    assert isinstance(ref, BoTBlock) and isinstance(block.mhsa, RelPosMHSA) and block.mhsa.feat_size == (14, 14)
    # the registered model's first c5 block: same keys and shapes
    assert {k: v.shape for k, v in block.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    assert _count(block) == 1024 * 512 + 512 * 1536 + 2 * 27 * 128 + 512 * 2048 + 1024 * 2048 + 2 * (512 + 512 + 2048 + 2048)
    block.eval()
    x = torch.randn(2, 1024, 10, 15)  # any size
    with torch.no_grad():
        y = block(x)
        assert y.shape == (2, 2048, 5, 8)
        # the last BN starts at gamma = 0: the block starts as its shortcut
        torch.testing.assert_close(y, torch.relu(block.downsample(x)), rtol=0, atol=0)
    with pytest.raises(ValueError, match="stride must be 1 or 2"):
        BoTBlock(64, 16, stride=3, feat_size=8)


def test_dilated_and_partial_conversions_size_their_tables():
    # layer4 dilated instead of strided: every block attends at the c4 resolution (14x14 at 224 px)
    with torch.device("meta"):  # shapes only; the attention is made on the model's device
        src = torchvision.models.resnet50(replace_stride_with_dilation=[False, False, True])
        big = torchvision.models.resnet50()
    model, report = botnet_from_resnet(src, img_size=(224, 192), inplace=True)
    assert report.attention_sizes == {f"layer4.{j}": (14, 12) for j in range(3)}
    assert all(isinstance(b.pool, nn.Identity) for b in model.layer4)
    assert all(p.is_meta for p in model.parameters())
    # only the last block, at 256 px: 8x8 tokens; the other blocks keep their 3x3 convs
    model, report = botnet_from_resnet(big, img_size=256, blocks=1, inplace=True)
    assert report.attention_sizes == {"layer4.2": (8, 8)} and report.removed == ["layer4.2.conv2.weight"]
    assert _count(model) == R50_PARAMS - 512 * 512 * 9 + 512 * 1536 + 2 * 15 * 128
    assert isinstance(model.layer4[0].conv2, nn.Conv2d)


def test_converted_model_scripts():
    torch.manual_seed(0)
    small = torchvision.models.resnet.ResNet(TvBottleneck, [1, 1, 1, 2], num_classes=5, width_per_group=16)
    model, _ = botnet_from_resnet(small, img_size=64)
    model.eval()
    scripted = torch.jit.script(model)
    with torch.no_grad():
        for hw in ((64, 64), (80, 48)):
            x = torch.randn(1, 3, *hw)
            torch.testing.assert_close(scripted(x), model(x), rtol=1e-5, atol=1e-5)


def test_what_cannot_be_converted_says_why():
    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        cases = [
            (torchvision.models.resnet18(), {}, TypeError, "not a bottleneck block .*resnet18/34 have basic blocks"),
            (botnet.create_model("resnet50"), {}, TypeError, r"already a botnet ResNet: build .*create_model\('botnet50'"),
            (nn.Sequential(nn.Conv2d(3, 8, 3)), {}, TypeError, "has no layer4"),
            (torchvision.models.resnet50(), {"blocks": 4}, ValueError,
             r"blocks must be between 1 and 3 \(layer4's blocks\), got 4"),
            (timm.create_model("resnet50", drop_block_rate=0.1), {}, ValueError,
             r"DropBlock \(drop_block\).*build the ResNet without it"),
        ]
    for model, kw, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            botnet_from_resnet(model, inplace=True, **kw)
