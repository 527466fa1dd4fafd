"""Multi-head self-attention with 2D relative position logits (the BoT block's MHSA).

Semantics (the official BoTNet snippet, see the paper notes):

    q̂ = q · d^-1/2
    logit[i, j] = q̂_i·k_j + q̂_i·r_h[row(j) - row(i) + H - 1] + q̂_i·r_w[col(j) - col(i) + W - 1]
    out_i = Σ_j softmax_j(logit[i, :]) v_j

with 4 heads by default, bias-free 1x1 q/k/v projections, tables shared across heads, no output
projection. The position term is never materialised as an N x N tensor: because
``q̂_i·r_h[row(j) - row(i) + H - 1] = a_i · onehot(row(j))`` with ``a_i[x] = q̂_i·r_h[x - row(i) + H - 1]``
(H numbers per query) and likewise for columns, the whole logit is a single dot product

    [q̂_i, a_i, b_i] · [k_j, onehot(row(j)), onehot(col(j))]

so one ``scaled_dot_product_attention`` call (scale 1, fused kernels) computes it in O(N) memory.

Any input size works: tables trained at ``feat_size`` are linearly resized to the needed length
(2L'-1 for relative, L' for absolute) on the fly, and a checkpoint made at another ``feat_size``
is resized the same way when loaded.
"""
from __future__ import annotations

import logging
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RelPosMHSA", "resize_pos_table"]

_log = logging.getLogger(__name__)

PosKind = Literal["relative", "absolute", "none"]


def resize_pos_table(table: torch.Tensor, length: int) -> torch.Tensor:
    """Linearly resize a (L, d) position table to (length, d) (align_corners=False)."""
    # (L, d) -> (1, d, L) -> (1, d, length) -> (length, d)
    return F.interpolate(table.t()[None], size=length, mode="linear", align_corners=False)[0].t()


def _needs_resize(table: torch.Tensor, length: int) -> bool:
    # Under tracing/compilation/export the input size may be symbolic: always take the resize
    # path there (resizing to the same length is exactly the identity), so no guard on H/W is made.
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling():
        return True
    return table.shape[0] != length


def _fit_table(table: torch.Tensor, length: int) -> torch.Tensor:
    return resize_pos_table(table, length) if _needs_resize(table, length) else table


def _rel_index(length: int, device: torch.device) -> torch.Tensor:
    """(L, L) index: [query position, key position] -> key - query + L - 1."""
    pos = torch.arange(length, device=device)
    return pos[None, :] - pos[:, None] + length - 1


def _onehot_keys(H: int, W: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(H*W, H+W): row j*W+y holds [onehot(x), onehot(y)] for key position (x, y).

    Built with expand/reshape only (no repeat_interleave): the ONNX exporter translates
    repeat_interleave with a symbolic count wrongly, which broke dynamic-size ONNX graphs.
    """
    eye_h = torch.eye(H, dtype=dtype, device=device)
    eye_w = torch.eye(W, dtype=dtype, device=device)
    rows = eye_h[:, None, :].expand(H, W, H)
    cols = eye_w[None, :, :].expand(H, W, W)
    return torch.cat([rows, cols], dim=-1).reshape(H * W, H + W)


class RelPosMHSA(nn.Module):
    """Global multi-head self-attention over a (B, C, H, W) map with 2D relative positions.

    Args:
        dim: channels C of the input and output.
        heads: number of heads; ``dim`` must be divisible by it (d = dim // heads).
        feat_size: (H, W) the position tables are built (and trained) for. Other sizes work.
        pos: "relative" (the paper), "absolute" (E_h[row] + E_w[col], ablation) or "none"
            (content only, ablation).
        qkv_init_std: std of the normal init of the q/k/v projection (official code: 0.01).
        pos_init_std: std of the tables' normal init; default d^-1/2 (the official code meant
            this and passed it as the mean by mistake).
        fused: True (default) computes everything in one scaled_dot_product_attention call with
            O(N) memory; False materialises the (B, heads, N, N) logits (the textbook path, kept
            as a reference and for counting the paper's multiply-adds).
    """

    def __init__(
        self,
        dim: int,
        heads: int = 4,
        feat_size: int | tuple[int, int] = (14, 14),
        *,
        pos: PosKind = "relative",
        qkv_init_std: float = 0.01,
        pos_init_std: float | None = None,
        fused: bool = True,
    ) -> None:
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        if pos not in ("relative", "absolute", "none"):
            raise ValueError(f"pos must be 'relative', 'absolute' or 'none', got {pos!r}")
        fh, fw = (feat_size, feat_size) if isinstance(feat_size, int) else tuple(feat_size)
        if fh < 1 or fw < 1:
            raise ValueError(f"feat_size must be positive, got {(fh, fw)}")
        self.dim, self.heads, self.dim_head = dim, heads, dim // heads
        self.feat_size = (int(fh), int(fw))
        self.pos = pos
        self.scale = self.dim_head**-0.5
        self.fused = fused
        self.qkv = nn.Conv2d(dim, 3 * dim, kernel_size=1, bias=False)  # channels [q; k; v]
        d = self.dim_head
        if pos == "relative":
            self.rel_h = nn.Parameter(torch.empty(2 * fh - 1, d))
            self.rel_w = nn.Parameter(torch.empty(2 * fw - 1, d))
        elif pos == "absolute":
            self.abs_h = nn.Parameter(torch.empty(fh, d))
            self.abs_w = nn.Parameter(torch.empty(fw, d))
        self.qkv_init_std = qkv_init_std
        self.pos_init_std = d**-0.5 if pos_init_std is None else pos_init_std
        self.reset_parameters()
        self.register_load_state_dict_pre_hook(_resize_tables_on_load)

    def reset_parameters(self) -> None:
        nn.init.normal_(self.qkv.weight, std=self.qkv_init_std)
        for p in self._pos_tables():
            nn.init.normal_(p, std=self.pos_init_std)

    def _pos_tables(self) -> list[nn.Parameter]:
        if self.pos == "relative":
            return [self.rel_h, self.rel_w]
        if self.pos == "absolute":
            return [self.abs_h, self.abs_w]
        return []

    def extra_repr(self) -> str:
        return f"dim={self.dim}, heads={self.heads}, feat_size={self.feat_size}, pos={self.pos!r}"

    # ------------------------------------------------------------------ helpers
    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.dim:
            raise ValueError(
                f"RelPosMHSA expects input of shape (B, {self.dim}, H, W), got {tuple(x.shape)}"
            )

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> q̂, k, v each (B, heads, N, d); q̂ already scaled by d^-1/2."""
        self._check_input(x)
        B, _, H, W = x.shape
        qkv = self.qkv(x).reshape(B, 3, self.heads, self.dim_head, H * W)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each (B, heads, N, d)
        return q * self.scale, k, v

    def _fused(self, x: torch.Tensor) -> torch.Tensor:
        """The O(N)-memory path: one scaled_dot_product_attention call on augmented q/k.

        Layout (chosen by measurement on the CPU, same math): the projection is one token-major
        GEMM, (B, N, 3C) = x_tokens @ W^T (a view of the input for channels_last), so each head's
        q/k/v rows are contiguous in d; the d^-1/2 factor is SDPA's ``scale`` applied to the whole
        augmented dot product (= q̂·k + q̂·r_h + q̂·r_w) instead of an extra pass over q.
        """
        self._check_input(x)
        B, C, H, W = x.shape
        N, nh, d = H * W, self.heads, self.dim_head
        tokens = x.flatten(2).transpose(1, 2)  # (B, N, C); a view for channels_last input
        qkv = F.linear(tokens, self.qkv.weight.view(3 * C, C)).view(B, N, 3, nh, d)
        # (B, heads, N, d) views, unscaled. The SDPA inputs below are made contiguous in this
        # head-major layout: the CPU flash kernel is ~2x slower at 64x64 on token-major strides.
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if self.pos == "relative":
            r_h = _fit_table(self.rel_h, 2 * H - 1)  # (2H-1, d)
            r_w = _fit_table(self.rel_w, 2 * W - 1)  # (2W-1, d)
            # R_h[r, x] = r_h[x - r + H - 1]: the table row for query row r and key row x.
            R_h = r_h[_rel_index(H, x.device)].to(q.dtype)  # (H, H, d)
            R_w = r_w[_rel_index(W, x.device)].to(q.dtype)  # (W, W, d)
            qg = q.reshape(B, nh, H, W, d)
            a = torch.einsum("bnhwd,hxd->bnhwx", qg, R_h).reshape(B, nh, N, H)  # per-key-row logits
            b = torch.einsum("bnhwd,wyd->bnhwy", qg, R_w).reshape(B, nh, N, W)  # per-key-col logits
            onehot = _onehot_keys(H, W, k.dtype, k.device)  # (N, H + W): [onehot(row j), onehot(col j)]
            q = torch.cat([q, a, b], dim=-1)
            k = torch.cat([k, onehot.expand(B, nh, N, H + W)], dim=-1)
            # Fused kernels want one head size for q, k and v: pad v with zeros, drop them after.
            v = F.pad(v, (0, H + W))
        else:
            if self.pos == "absolute":
                e_h = _fit_table(self.abs_h, H)  # (H, d)
                e_w = _fit_table(self.abs_w, W)  # (W, d)
                k = k + (e_h[:, None, :] + e_w[None, :, :]).reshape(N, d).to(k.dtype)  # key position embedding
            q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)[..., :d]  # (B, heads, N, d)
        # -> (B, C, H, W) with channel = head*d + i, in the input's memory format (one copy either way)
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            return out.transpose(1, 2).reshape(B, H, W, C).permute(0, 3, 1, 2)
        return out.transpose(-1, -2).reshape(B, C, H, W)

    def _logits_explicit(self, q: torch.Tensor, k: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """The full (B, heads, N, N) logits, built the textbook way (reference path)."""
        B, nh, N, d = q.shape
        logits = q @ k.transpose(-1, -2)  # content term
        if self.pos == "relative":
            R_h = _fit_table(self.rel_h, 2 * H - 1)[_rel_index(H, q.device)].to(q.dtype)  # (H, H, d)
            R_w = _fit_table(self.rel_w, 2 * W - 1)[_rel_index(W, q.device)].to(q.dtype)  # (W, W, d)
            qg = q.reshape(B, nh, H, W, d)
            a = torch.einsum("bnhwd,hxd->bnhwx", qg, R_h).reshape(B, nh, N, H, 1)
            b = torch.einsum("bnhwd,wyd->bnhwy", qg, R_w).reshape(B, nh, N, 1, W)
            logits = logits + (a + b).reshape(B, nh, N, N)  # key j = (x, y) -> x * W + y
        elif self.pos == "absolute":
            e = (_fit_table(self.abs_h, H)[:, None] + _fit_table(self.abs_w, W)[None]).reshape(N, d)
            logits = logits + q @ e.to(q.dtype).t()
        return logits

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return self._fused(x)
        B, C, H, W = x.shape
        q, k, v = self._qkv(x)
        out = self._logits_explicit(q, k, H, W).softmax(dim=-1) @ v
        # (B, heads, N, d) -> (B, heads*d, H, W): channel = head*d + i
        return out.transpose(-1, -2).reshape(B, C, H, W)

    @torch.no_grad()
    def attention_probs(self, x: torch.Tensor) -> torch.Tensor:
        """The explicit softmax weights, (B, heads, N, N). For visualisation and tests only."""
        B, C, H, W = x.shape
        q, k, _ = self._qkv(x)
        logits = self._logits_explicit(q, k, H, W)
        return logits.softmax(dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32))


def _resize_tables_on_load(module: RelPosMHSA, state_dict, prefix, *args) -> None:
    """Resize position tables stored at another feat_size to this module's size."""
    for name in ("rel_h", "rel_w", "abs_h", "abs_w"):
        key = prefix + name
        own = getattr(module, name, None)
        if key not in state_dict or own is None:
            continue
        stored = state_dict[key]
        if stored.dim() == 2 and stored.shape[1] == own.shape[1] and stored.shape[0] != own.shape[0]:
            state_dict[key] = resize_pos_table(stored.to(own.dtype), own.shape[0])
            _log.warning(
                "%s: resized position table %s from %d to %d rows (checkpoint made at another feat_size)",
                prefix.rstrip(".") or "RelPosMHSA", name, stored.shape[0], own.shape[0],
            )

