"""Multi-head self-attention with 2D relative position logits (the BoT block's MHSA).

Semantics (the official BoTNet snippet, see the paper notes):

    q̂ = q · d^-1/2
    logit[i, j] = q̂_i·k_j + q̂_i·r_h[row(j) - row(i) + H - 1] + q̂_i·r_w[col(j) - col(i) + W - 1]
    out_i = Σ_j softmax_j(logit[i, :]) v_j

with 4 heads by default, bias-free 1x1 q/k/v projections, tables shared across heads, no output
projection. The module holds the parameters and options; the computation is
:func:`botnet.layers.functional.rel_pos_attention`, with three implementations of the same function
(``impl=``, :mod:`botnet.layers.attention_backends`) that never take the position term as an N x N
input except the textbook ``"explicit"`` one.

Any input size works: tables trained at ``feat_size`` are linearly resized to the needed length
(2L'-1 for relative, L' for absolute) on the fly, and a checkpoint made at another ``feat_size``
is resized the same way when loaded (:mod:`botnet.layers.position_tables`).
"""
import logging
from typing import List, Optional

import torch
from torch import nn

from botnet.layers.attention_backends import IMPLS, explicit_logits, project, rel_terms, resolve_impl
from botnet.layers.functional import check_input, rel_pos_attention
from botnet.layers.position_tables import POS_KINDS, position_terms, resize_pos_table

__all__ = ["RelPosMHSA"]

_log = logging.getLogger(__name__)

# FX records the module's call of the layer's function as one node (looked up in this module's globals).
torch.fx.wrap("rel_pos_attention")


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
        impl: "auto" (default; :func:`~botnet.layers.attention_backends.choose_impl` picks per
            device, dtype, tokens and grad mode), "sdpa", "flex" or "explicit"
            (:mod:`botnet.layers.attention_backends`). All compute the same function and have the
            same parameters.
    """

    __constants__ = ["heads", "pos", "scale", "_relative", "_absolute"]
    __jit_unused_properties__ = ["impl"]  # a Python-side switch; TorchScript reads _impl

    def __init__(
        self,
        dim: int,
        heads: int = 4,
        feat_size: int | tuple[int, int] = (14, 14),
        *,
        pos: str = "relative",
        qkv_init_std: float = 0.01,
        pos_init_std: float | None = None,
        impl: str = "auto",
    ) -> None:
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        if pos not in POS_KINDS:
            raise ValueError(f"pos must be 'relative', 'absolute' or 'none', got {pos!r}")
        fh, fw = (feat_size, feat_size) if isinstance(feat_size, int) else tuple(feat_size)
        if fh < 1 or fw < 1:
            raise ValueError(f"feat_size must be positive, got {(fh, fw)}")
        self.dim, self.heads, self.dim_head = dim, heads, dim // heads
        self.feat_size = (int(fh), int(fw))
        self.pos = pos
        self._relative, self._absolute = pos == "relative", pos == "absolute"
        self.scale = self.dim_head**-0.5
        self.impl = impl  # checked by the property setter
        self.last_impl = ""  # what the latest eager forward ran (for extra_repr)
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

    @property
    def impl(self) -> str:
        return self._impl

    @impl.setter
    def impl(self, value: str) -> None:
        if value not in IMPLS:
            raise ValueError(f"impl must be one of {', '.join(IMPLS)}; got {value!r}")
        self._impl = value

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        # model.to(memory_format=torch.channels_last) gives the (3C, C, 1, 1) qkv weight the strides
        # (C, 1, C, C); the attention uses it as a (3C, C) matrix, whose gradient comes back with the
        # default strides (C, 1, 1, 1). Same memory, but DDP compares strides and warns on every
        # backward ("Grad strides do not match bucket view strides"), so keep the default strides.
        w = self.qkv.weight
        if w.stride() != torch.empty(w.shape, device="meta").stride():
            w.data = w.data.clone(memory_format=torch.contiguous_format)
        return self

    def reset_parameters(self) -> None:
        nn.init.normal_(self.qkv.weight, std=self.qkv_init_std)
        for p in self._pos_tables():
            nn.init.normal_(p, std=self.pos_init_std)

    def _pos_tables(self) -> List[nn.Parameter]:
        return [getattr(self, n) for n in self._pos_table_names()]

    def _pos_table_names(self) -> List[str]:
        return {"relative": ["rel_h", "rel_w"], "absolute": ["abs_h", "abs_w"]}.get(self.pos, [])

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """The position tables (timm's convention: names relative to this module)."""
        return set(self._pos_table_names())

    def extra_repr(self) -> str:
        ran = f" (last ran {self.last_impl})" if self._impl == "auto" and self.last_impl else ""
        return f"dim={self.dim}, heads={self.heads}, feat_size={self.feat_size}, pos={self.pos!r}, impl={self._impl!r}{ran}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        table_h: Optional[torch.Tensor] = None
        table_w: Optional[torch.Tensor] = None
        if self._relative:
            table_h, table_w = self.rel_h, self.rel_w
        elif self._absolute:
            table_h, table_w = self.abs_h, self.abs_w
        impl = self._impl
        if not torch.jit.is_scripting():
            # FX records the call with impl as given (resolved when the graph runs); eager runs
            # record what they chose for extra_repr.
            if not (isinstance(x, torch.fx.Proxy) or torch.compiler.is_compiling() or torch.jit.is_tracing()):
                check_input(x, self.dim)
                impl = resolve_impl(impl, x, self.qkv.weight)
                self.last_impl = impl
        return rel_pos_attention(x, self.qkv.weight, table_h, table_w, self.heads, self.pos, impl, self.scale)

    @torch.no_grad()
    def attention_probs(self, x: torch.Tensor) -> torch.Tensor:
        """The explicit softmax weights, (B, heads, N, N). For visualisation and tests only."""
        q, k, _ = project(x, self.qkv.weight, self.heads)
        tables = self._pos_tables()
        R_h, R_w, E = position_terms(x, *(tables or [None, None]), self.pos, self.dim_head)
        a = b = None
        if R_h is not None and R_w is not None:
            a, b = rel_terms(q, R_h, R_w)
        if E is not None:
            k = k + E.to(k.dtype)
        logits = explicit_logits(q, k, a, b, self.scale)
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
