"""RelPosMHSA against an independent brute-force formula (float64, explicit loops)."""
from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from botnet.layers import RelPosMHSA, resize_pos_table


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
@pytest.mark.parametrize("fused", [True, False])
def test_matches_brute_force(pos, size, fused):
    m = _layer(pos, fused=fused)
    x = torch.randn(2, 16, *size, dtype=torch.float64)
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
def test_gradients_reach_every_parameter(pos):
    m = RelPosMHSA(16, 2, (4, 4), pos=pos)
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
    m.fused = False
    with _MaxNumel() as explicit:
        m(x)
    assert explicit.max_numel >= B * heads * N * N
