"""The attention implementations' rules: SDPA head-size padding, kernel names and what impl="auto" picks.

That every implementation computes the layer's function is checked through RelPosMHSA in
test_rel_pos_mhsa.py (against a brute-force formula)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from botnet.layers import choose_impl, sdpa_head_size
from botnet.layers.attention_backends import sdpa_kernel_name


@pytest.mark.parametrize(("H", "W", "aug", "padded"), [
    (14, 14, 156, 160), (32, 32, 192, 192), (64, 64, 256, 256), (50, 84, 262, 264), (72, 72, 272, 272), (1, 1, 130, 136),
])
def test_sdpa_head_size_padding_rule(H, W, aug, padded):
    d = 128
    assert d + H + W == aug
    assert sdpa_head_size(aug, "cuda") == padded  # a multiple of 8: every fused CUDA kernel's alignment
    assert padded % 8 == 0 and 0 <= padded - aug < 8
    assert sdpa_head_size(aug, "cpu") == aug  # the CPU flash kernel takes any size: no extra work
    assert sdpa_head_size(aug, "meta") == aug


def test_sdpa_kernel_name():
    assert sdpa_kernel_name(160, torch.bfloat16, "cuda") == "flash"  # 14x14: flash in half precision
    assert sdpa_kernel_name(256, torch.float16, "cuda") == "flash"
    assert sdpa_kernel_name(264, torch.bfloat16, "cuda") == "efficient"  # 50x84: over flash's 256
    assert sdpa_kernel_name(160, torch.float32, "cuda") == "efficient"  # flash has no fp32
    assert sdpa_kernel_name(262, torch.float32, "cpu") == "cpu-flash"


def test_zero_padding_changes_nothing():
    # The padded columns are zeros in q, k and v: the dot products and the kept outputs are equal.
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 30, 13, dtype=torch.float64) for _ in range(3))
    ref = F.scaled_dot_product_attention(q, k, v, scale=0.3)
    p = sdpa_head_size(13, "cuda") - 13
    padded = F.scaled_dot_product_attention(*(F.pad(t, (0, p)) for t in (q, k, v)), scale=0.3)[..., :13]
    assert p == 3
    torch.testing.assert_close(padded, ref, rtol=1e-12, atol=1e-12)


def test_auto_rule():
    bf16, fp32 = torch.bfloat16, torch.float32
    for grad in (False, True):
        assert choose_impl("cuda", bf16, 14 * 14, grad) == "explicit"
        for hw in (32 * 32, 64 * 64, 50 * 84, 72 * 72):
            assert choose_impl("cuda", bf16, hw, grad) == "sdpa"
        assert choose_impl("cuda", fp32, 14 * 14, grad) == "explicit"
        assert choose_impl("cuda", fp32, 32 * 32, grad) == "sdpa"  # memory <= 0.3 of timm from 32x32 up
        assert choose_impl("meta", fp32, 64 * 64, grad) == "sdpa"
    for tokens in (1, 14 * 14, 32 * 32, 64 * 64, 50 * 84):
        assert choose_impl("cpu", fp32, tokens, False) == "sdpa"
        assert choose_impl("cpu", fp32, tokens, True) != "flex"  # flex has no CPU backward
    assert choose_impl("cpu", fp32, 64 * 64, True) == "sdpa"  # O(N) memory where N x N is big
