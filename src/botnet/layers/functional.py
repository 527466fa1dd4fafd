"""RelPosMHSA as one function of its input and parameters, and the single op exporters see.

:func:`rel_pos_attention` fits the position tables to the input (:mod:`botnet.layers.position_tables`),
projects q/k/v and runs the chosen implementation (:mod:`botnet.layers.attention_backends`).
Inside :func:`attention_as_op` it runs as the custom op ``botnet::rel_pos_attention`` instead.
"""
import contextlib
from typing import Optional

import torch

from botnet.layers.attention_backends import attend, project, rel_terms, resolve_impl
from botnet.layers.position_tables import position_terms

__all__ = ["rel_pos_attention", "attention_as_op", "check_input"]


def check_input(x: torch.Tensor, dim: int) -> None:
    if x.dim() != 4 or x.shape[1] != dim:
        got = "(" + ", ".join([str(n) for n in x.shape]) + ")"
        raise ValueError("RelPosMHSA expects input of shape (B, " + str(dim) + ", H, W), got " + got)


def _layer(x: torch.Tensor, weight: torch.Tensor, R_h: Optional[torch.Tensor], R_w: Optional[torch.Tensor],
           E: Optional[torch.Tensor], heads: int, scale: float, chosen: str) -> torch.Tensor:
    B, C, H, W = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
    q, k, v = project(x, weight, heads)
    if E is not None:
        k = k + E.to(k.dtype)  # key position embedding: q̂·(k_j + E_h[x] + E_w[y]) (k may be autocast's dtype)
    a: Optional[torch.Tensor] = None
    b: Optional[torch.Tensor] = None
    if R_h is not None and R_w is not None:
        a, b = rel_terms(q, R_h, R_w)
    out = attend(chosen, q, k, v, a, b, scale)
    # -> (B, C, H, W) with channel = head*d + i, in the input's memory format (one copy either way)
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return out.transpose(1, 2).reshape(B, H, W, C).permute(0, 3, 1, 2)
    return out.transpose(-1, -2).reshape(B, C, H, W)


# ---------------------------------------------------------------------- one op for exporters
# While an exporter traces the model inside :func:`attention_as_op`, the layer (projection and
# attention, after the position tables are fitted to the map) runs as the custom op
# ``botnet::rel_pos_attention`` (eager: the same function, through SDPA), so the export keeps it as
# one node and can lower it to a memory-linear graph of its own (botnet.export.onnx_attention)
# instead of SDPA's decomposition, which materialises the N x N logits.
_AS_OP = [False]


@torch.library.custom_op("botnet::rel_pos_attention", mutates_args=())
def _attention_op(x: torch.Tensor, weight: torch.Tensor, R_h: Optional[torch.Tensor], R_w: Optional[torch.Tensor],
                  E: Optional[torch.Tensor], heads: int, scale: float) -> torch.Tensor:
    """The layer given its position terms (:func:`position_terms`); the output is NCHW-contiguous."""
    return _layer(x, weight, R_h, R_w, E, heads, scale, "sdpa").contiguous()


@_attention_op.register_fake
def _(x, weight, R_h, R_w, E, heads, scale):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@contextlib.contextmanager
def attention_as_op():
    """Inside the block, every RelPosMHSA runs as the one op ``botnet::rel_pos_attention`` (for
    exporters; not re-entrant across threads)."""
    before = _AS_OP[0]
    _AS_OP[0] = True
    try:
        yield
    finally:
        _AS_OP[0] = before


# ---------------------------------------------------------------------- the layer's function
def rel_pos_attention(x: torch.Tensor, weight: torch.Tensor, table_h: Optional[torch.Tensor],
                      table_w: Optional[torch.Tensor], heads: int, pos: str, impl: str,
                      scale: float) -> torch.Tensor:
    """The whole layer as one function of its input and parameters (see :mod:`botnet.layers.rel_pos_mhsa`).

    ``pos`` "relative" takes ``table_h`` (2H'-1, d) / ``table_w`` (2W'-1, d), "absolute" (H', d) /
    (W', d); "none" ignores them. ``scale`` is d^-1/2 (a Python number, so traces keep no shape
    arithmetic for it). FX records RelPosMHSA's call of this function as one node (torch.fx.wrap
    in :mod:`botnet.layers.rel_pos_mhsa`).
    """
    if not torch.jit.is_tracing():  # a trace would record the check as a constant (and warn)
        check_input(x, weight.shape[1])
    chosen = resolve_impl(impl, x, weight)
    R_h, R_w, E = position_terms(x, table_h, table_w, pos, x.shape[1] // heads)
    as_op = False
    if not torch.jit.is_scripting():  # (TorchScript skips this block: it cannot read _AS_OP)
        as_op = _AS_OP[0]
    if as_op:
        return torch.ops.botnet.rel_pos_attention(x, weight, R_h, R_w, E, heads, scale)
    return _layer(x, weight, R_h, R_w, E, heads, scale, chosen)
