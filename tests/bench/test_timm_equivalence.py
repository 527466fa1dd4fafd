"""The attention suite's two layers compute the same numbers: RelPosMHSA and timm's BottleneckAttn with
the weights copied by the benchmark's own copy_to_timm_attn, in float64.

The default q/k/v init (std 0.01) makes the softmax almost uniform, which would hide a wrong position
term; the projection is re-drawn with std 0.05 at dim 512, scaled by (512 / dim)^1/2 for narrower layers
(|logits| ~ 1-10 at every tested width), and zeroing the position tables must change the output clearly, so a wrong position term could not pass."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from botnet.bench.cases import copy_to_timm_attn
from botnet.layers import RelPosMHSA

BottleneckAttn = pytest.importorskip("timm.layers.bottleneck_attn").BottleneckAttn


def _pair(hw, dim, heads, impl="auto"):
    torch.manual_seed(0)
    ours = RelPosMHSA(dim, heads, hw, impl=impl).double()
    nn.init.normal_(ours.qkv.weight, std=0.05 * (512 / dim) ** 0.5)
    theirs = BottleneckAttn(dim, feat_size=hw, num_heads=heads, scale_pos_embed=True).double()
    copy_to_timm_attn(ours, theirs)
    return ours.eval(), theirs.eval()


@pytest.mark.parametrize(("hw", "dim", "heads", "impl"), [
    ((5, 5), 32, 2, "auto"), ((5, 5), 32, 2, "sdpa"), ((5, 5), 32, 2, "explicit"),
    ((4, 7), 32, 2, "auto"),  # non-square, as the GPU preset's 50x84
    ((14, 14), 512, 4, "auto"),  # the attention suite's layer at its smallest preset size
])
def test_ours_equals_timm_with_copied_weights(hw, dim, heads, impl):
    ours, theirs = _pair(hw, dim, heads, impl)
    x = torch.randn(2, dim, *hw, dtype=torch.float64)
    with torch.no_grad():
        a, b = ours(x), theirs(x)
        probs = ours.attention_probs(x)
        ours.rel_h.zero_()
        ours.rel_w.zero_()
        without_pos = ours(x)
    assert a.shape == b.shape == x.shape
    torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    # the check is sensitive: the softmax is far from uniform, and the position term shows in the output
    assert probs.max() > 5 / (hw[0] * hw[1])
    assert (without_pos - b).abs().max() > 1e-3 * b.abs().max()
