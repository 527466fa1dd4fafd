"""RelPosMHSA against an independent brute-force formula (float64, explicit loops)."""
from __future__ import annotations

import logging
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from botnet.layers import IMPLS, RelPosMHSA, choose_impl, resize_pos_table

HAVE_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAVE_CUDA, reason="needs a CUDA GPU (fused SDPA kernels)")
# Compiled flex_attention on the CPU needs Inductor's C++ toolchain.
HAVE_CXX = bool(shutil.which("g++") or shutil.which("c++"))
needs_compiler = pytest.mark.skipif(not HAVE_CXX, reason="no C++ compiler for torch.compile (Inductor) on the CPU")


def _table_for(table: torch.Tensor, length: int) -> torch.Tensor:
    """The spec's resize, written out: interpolate(table.T[None], 2L'-1, linear, align_corners=False)."""
    if table.shape[0] == length:
        return table
    return F.interpolate(table.T[None], size=length, mode="linear", align_corners=False)[0].T


def brute_force(mod: RelPosMHSA, x: torch.Tensor) -> torch.Tensor:
    """out[c, i] for one image by the paper's formula with loops over queries and keys."""
    x = x.double()
    _, H, W = x.shape
    C, nh, d = mod.dim, mod.heads, mod.dim_head
    w = mod.qkv.weight.detach().double()[:, :, 0, 0]  # (3C, C), rows [q; k; v], channel = head*d + i
    wq, wk, wv = w[:C], w[C : 2 * C], w[2 * C :]
    if mod.pos == "relative":
        rh = _table_for(mod.rel_h.detach().double(), 2 * H - 1)
        rw = _table_for(mod.rel_w.detach().double(), 2 * W - 1)
    elif mod.pos == "absolute":
        eh = _table_for(mod.abs_h.detach().double(), H)
        ew = _table_for(mod.abs_w.detach().double(), W)
    out = torch.zeros(C, H, W, dtype=torch.float64)
    for h in range(nh):
        sl = slice(h * d, (h + 1) * d)
        for qi in range(H):
            for qj in range(W):
                q = (wq[sl] @ x[:, qi, qj]) / math.sqrt(d)  # q̂: scaled before both terms
                logits, values = [], []
                for ki in range(H):
                    for kj in range(W):
                        k = wk[sl] @ x[:, ki, kj]
                        logit = q @ k
                        if mod.pos == "relative":
                            logit = logit + q @ rh[ki - qi + H - 1] + q @ rw[kj - qj + W - 1]
                        elif mod.pos == "absolute":
                            logit = logit + q @ (eh[ki] + ew[kj])
                        logits.append(logit)
                        values.append(wv[sl] @ x[:, ki, kj])
                p = torch.softmax(torch.stack(logits), dim=0)
                out[sl, qi, qj] = (p[:, None] * torch.stack(values)).sum(0)
    return out


def _layer(pos="relative", dim=16, heads=2, feat_size=(5, 4), **kw) -> RelPosMHSA:
    torch.manual_seed(0)
    m = RelPosMHSA(dim, heads, feat_size, pos=pos, **kw).double()
    # Larger q/k weights than the 0.01 init so the softmax is far from uniform and errors show.
    torch.nn.init.normal_(m.qkv.weight, std=0.5)
    return m


@pytest.mark.parametrize("pos", ["relative", "absolute", "none"])
@pytest.mark.parametrize("size", [(5, 4), (3, 3), (7, 6), (4, 9), (1, 5)])
@pytest.mark.parametrize("impl", IMPLS)
def test_matches_brute_force(pos, size, impl):
    # float64 flex runs the unfused reference of flex_attention (the CPU kernel has no float64):
    # the same score_mod, checked here; the compiled kernel is checked in float32 below.
    m = _layer(pos, impl=impl)
    x = torch.randn(2, 16, *size, dtype=torch.float64)
    with torch.no_grad():  # flex has no CPU backward
        y = m(x)
    assert y.shape == x.shape
    for b in range(2):
        torch.testing.assert_close(y[b], brute_force(m, x[b]), rtol=1e-9, atol=1e-10)


def test_float32_close_to_brute_force():
    m = _layer("relative").float()
    x = torch.randn(1, 16, 6, 7)
    torch.testing.assert_close(m(x)[0].double(), brute_force(m, x[0]), rtol=1e-4, atol=1e-5)


def test_position_term_actually_matters():
    # Guards the brute force itself: relative and content-only must differ for the same weights.
    m_rel, m_none = _layer("relative"), _layer("none")
    m_none.qkv.load_state_dict(m_rel.qkv.state_dict())
    x = torch.randn(1, 16, 5, 4, dtype=torch.float64)
    assert (m_rel(x) - m_none(x)).abs().max() > 1e-3


def test_attention_probs_match_brute_force_weights():
    m = _layer("relative")
    x = torch.randn(1, 16, 4, 3, dtype=torch.float64)
    p = m.attention_probs(x)
    assert p.shape == (1, 2, 12, 12)
    torch.testing.assert_close(p.sum(-1), torch.ones(1, 2, 12, dtype=torch.float64))
    # out = P v reproduces the forward
    v = m.qkv(x)[:, 32:].reshape(1, 2, 8, 12).transpose(-1, -2)
    torch.testing.assert_close((p @ v).transpose(-1, -2).reshape(1, 16, 4, 3), m(x))


def test_relative_term_is_translation_equivariant():
    """With k = 0 and a spatially constant input, logits depend only on key - query offsets."""
    m = _layer("relative", feat_size=(6, 6))
    with torch.no_grad():
        m.qkv.weight[16:32] = 0  # keys zero: only the position term is left
    x = torch.randn(1, 16, 1, 1, dtype=torch.float64).expand(1, 16, 6, 6)
    logp = m.attention_probs(x).log()[0]  # (heads, N, N); log-softmax = logit - logsumexp(row)
    idx = lambda r, c: r * 6 + c  # noqa: E731
    for dr, dc in [(1, 0), (0, 2), (2, 1)]:
        for (qr, qc), (kr, kc), (kr2, kc2) in [((0, 0), (1, 2), (3, 0)), ((1, 1), (2, 3), (0, 0))]:
            a = logp[:, idx(qr, qc), idx(kr, kc)] - logp[:, idx(qr, qc), idx(kr2, kc2)]
            b = logp[:, idx(qr + dr, qc + dc), idx(kr + dr, kc + dc)] - logp[
                :, idx(qr + dr, qc + dc), idx(kr2 + dr, kc2 + dc)
            ]
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("pos", ["relative", "absolute", "none"])
@pytest.mark.parametrize("impl", ["auto", "sdpa", "explicit"])
def test_gradients_reach_every_parameter(pos, impl):
    m = RelPosMHSA(16, 2, (4, 4), pos=pos, impl=impl)
    for size in [(4, 4), (5, 3)]:
        m.zero_grad()
        m(torch.randn(2, 16, *size)).square().sum().backward()
        for name, p in m.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, (name, size)


def test_resize_to_same_length_is_identity():
    t = torch.randn(9, 8)
    assert torch.equal(resize_pos_table(t, 9), t)


def test_channel_mismatch_names_shapes():
    m = RelPosMHSA(32, 4, (4, 4))
    with pytest.raises(ValueError, match=r"\(B, 32, H, W\).*\(2, 16, 4, 4\)"):
        m(torch.randn(2, 16, 4, 4))


def test_invalid_options():
    with pytest.raises(ValueError, match="divisible"):
        RelPosMHSA(30, 4)
    with pytest.raises(ValueError, match="pos"):
        RelPosMHSA(32, 4, pos="learned")


def test_default_init_follows_official_code():
    torch.manual_seed(0)
    m = RelPosMHSA(512, 4, (14, 14))
    assert m.qkv.bias is None and m.qkv.weight.shape == (1536, 512, 1, 1)
    assert m.rel_h.shape == (27, 128) and m.rel_w.shape == (27, 128)
    assert abs(m.qkv.weight.std().item() - 0.01) < 1e-3
    # std d^-1/2 (not the mean the official snippet passed by mistake)
    assert abs(m.rel_h.std().item() - 128**-0.5) < 0.01 and abs(m.rel_h.mean().item()) < 0.01


@pytest.mark.parametrize("pos", ["relative", "absolute"])
def test_checkpoint_at_other_feat_size_is_resized_on_load(pos, caplog):
    src = RelPosMHSA(16, 2, (5, 4), pos=pos)
    dst = RelPosMHSA(16, 2, (8, 8), pos=pos)
    with caplog.at_level(logging.WARNING, logger="botnet.layers.rel_pos_mhsa"):
        dst.load_state_dict(src.state_dict())
    assert "resized position table" in caplog.text
    for name in dict(src.named_parameters()):
        if name == "qkv.weight":
            continue
        want_len = getattr(dst, name).shape[0]
        torch.testing.assert_close(getattr(dst, name), resize_pos_table(getattr(src, name), want_len))
    # The loaded module at its own size equals the source module running at that size.
    x = torch.randn(1, 16, 8, 8)
    torch.testing.assert_close(dst(x), src(x))


class _MaxNumel(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.max_numel, self.op = 0, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.numel() > self.max_numel:
                self.max_numel, self.op = t.numel(), str(func)
        return out


@pytest.mark.parametrize("train", [False, True])
def test_fused_path_never_materialises_n_by_n(train):
    B, heads, H, W = 1, 4, 16, 16
    N = H * W
    m = RelPosMHSA(64, heads, (H, W))
    x = torch.randn(B, 64, H, W, requires_grad=train)
    with _MaxNumel() as fused:
        y = m(x)
        if train:
            y.sum().backward()
    assert fused.max_numel < B * heads * N * N / 4, (fused.max_numel, fused.op)
    # ...while the textbook path does build B*heads*N*N logits (so the check can fail).
    m.impl = "explicit"
    with _MaxNumel() as explicit:
        m(x)
    assert explicit.max_numel >= B * heads * N * N


# --------------------------------------------------------------------------- implementations
@pytest.mark.parametrize("pos", ["relative", "absolute", "none"])
@pytest.mark.parametrize("size", [(5, 4), (1, 5), (6, 6)])
def test_sdpa_gradients_equal_explicit_gradients(pos, size):
    a, b = _layer(pos, impl="sdpa"), _layer(pos, impl="explicit")
    x = torch.randn(2, 16, *size, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 16, *size, dtype=torch.float64)
    grads = []
    for m in (a, b):
        x.grad = None
        m(x).backward(g)
        grads.append([x.grad.clone()] + [p.grad for p in m.parameters()])
    for ga, gb in zip(*grads):
        torch.testing.assert_close(ga, gb, rtol=1e-9, atol=1e-11)


def test_auto_choice_is_visible(caplog):
    m = RelPosMHSA(16, 2, (4, 4))
    assert "impl='auto'" in repr(m) and "last ran" not in repr(m)
    with caplog.at_level(logging.DEBUG, logger="botnet.layers.attention_backends"):
        with torch.no_grad():
            m(torch.randn(1, 16, 4, 3))
    assert m.last_impl == choose_impl("cpu", torch.float32, 12, False)
    assert f"impl='auto' (last ran {m.last_impl})" in repr(m)
    assert f"impl='auto' -> {m.last_impl} (cpu, torch.float32, 12 tokens" in caplog.text


def test_impl_option_is_checked():
    with pytest.raises(ValueError, match="impl must be one of auto, sdpa, flex, explicit"):
        RelPosMHSA(16, 2, impl="fast")
    m = RelPosMHSA(16, 2)
    with pytest.raises(ValueError, match="impl must be one of"):
        m.impl = "fused"
    assert m.impl == "auto"
    m.impl = "explicit"
    assert m.impl == "explicit"


def test_impls_share_parameters_and_state_dict_keys():
    mods = [RelPosMHSA(64, 4, (7, 7), impl=i) for i in IMPLS]
    keys = {tuple(m.state_dict()) for m in mods}
    assert keys == {("rel_h", "rel_w", "qkv.weight")}  # checkpoints do not depend on impl
    assert len({sum(p.numel() for p in m.parameters()) for m in mods}) == 1


def test_flex_refuses_cpu_training_with_a_clear_error():
    m = _layer("relative", impl="flex").float()
    with pytest.raises(RuntimeError, match="impl='flex' cannot train on the CPU.*use impl='auto' or 'sdpa'"):
        m(torch.randn(1, 16, 4, 4))


@needs_compiler
@pytest.mark.parametrize("size", [(5, 4), (1, 5)])
def test_flex_compiled_float32_matches_brute_force(size):
    m = _layer("relative", impl="flex").float()
    x = torch.randn(1, 16, *size)
    with torch.no_grad():
        y = m(x)
    torch.testing.assert_close(y[0].double(), brute_force(m, x[0]), rtol=1e-4, atol=1e-5)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("hw", [(14, 14), (50, 84), (72, 72)])
def test_cuda_sdpa_runs_a_fused_kernel_at_every_size(hw, dtype):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    m = RelPosMHSA(512, 4, hw, impl="sdpa").cuda()
    x = torch.randn(2, 512, *hw, device="cuda", requires_grad=True)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]):
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            y = m(x)  # raises if no fused kernel accepts the padded head size
        y.float().sum().backward()
    ref = m.double()(x.detach().double()) if dtype == torch.float32 else None
    if ref is not None:
        torch.testing.assert_close(y.double(), ref, rtol=1e-3, atol=1e-4)


def test_no_weight_decay_names_the_position_tables():
    from botnet.engine.optim import no_weight_decay_names, param_groups

    assert RelPosMHSA(16, 2, pos="relative").no_weight_decay() == {"rel_h", "rel_w"}
    assert RelPosMHSA(16, 2, pos="absolute").no_weight_decay() == {"abs_h", "abs_w"}
    assert RelPosMHSA(16, 2, pos="none").no_weight_decay() == set()
    block = torch.nn.Sequential(torch.nn.Conv2d(16, 16, 1), RelPosMHSA(16, 2))
    assert {"1.rel_h", "1.rel_w"} <= no_weight_decay_names(block)
    decay = {id(p) for g in param_groups(block, 0.1) if g["weight_decay"] > 0 for p in g["params"]}
    assert id(block[1].rel_h) not in decay and id(block[1].qkv.weight) in decay


def test_channels_last_model_keeps_the_qkv_weight_in_the_layout_of_its_gradient():
    """model.to(channels_last) would give the (3C, C, 1, 1) qkv weight strides (C, 1, C, C) while its
    gradient (it is used as a matrix) has (C, 1, 1, 1): DDP then warned on every backward."""
    import botnet

    model = botnet.create_model("botnet_mini", num_classes=10, in_chans=1, strides=[2, 2, 2, 1])
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(2, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    model(x).sum().backward()
    mhsa = [m for m in model.modules() if isinstance(m, RelPosMHSA)]
    assert len(mhsa) == 2
    for m in mhsa:
        assert m.qkv.weight.grad is not None and m.qkv.weight.grad.stride() == m.qkv.weight.stride()
    # the convolutions stay channels_last (3x3 weights: the strides differ from the default)
    conv = model.layer1[0].conv2.weight
    assert conv.stride() != torch.empty(conv.shape).stride() and conv.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("pos", ["relative", "absolute", "none"])
def test_autocast_keeps_q_k_v_in_one_dtype(pos, monkeypatch):
    # the position terms are built in the input's dtype; under bf16 autocast they must follow q / k
    # (an fp32 key embedding would promote k alone to fp32)
    from botnet.layers import attention_backends

    seen = []
    real = attention_backends._attend_sdpa

    def spy(q, k, v, a, b, scale):
        seen.append({t.dtype for t in (q, k, v, a, b) if t is not None})
        return real(q, k, v, a, b, scale)

    monkeypatch.setattr(attention_backends, "_attend_sdpa", spy)
    m = RelPosMHSA(32, 2, (4, 4), pos=pos, impl="sdpa")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(torch.randn(1, 32, 4, 5))
    assert seen == [{torch.bfloat16}] and out.dtype == torch.bfloat16
