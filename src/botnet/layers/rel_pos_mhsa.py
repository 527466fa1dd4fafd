"""Multi-head self-attention with 2D relative position logits (the BoT block's MHSA).

Semantics (the official BoTNet snippet, see the paper notes):

    q̂ = q · d^-1/2
    logit[i, j] = q̂_i·k_j + q̂_i·r_h[row(j) - row(i) + H - 1] + q̂_i·r_w[col(j) - col(i) + W - 1]
    out_i = Σ_j softmax_j(logit[i, :]) v_j

with 4 heads by default, bias-free 1x1 q/k/v projections, tables shared across heads, no output
projection. The position term is never an N x N input: ``q̂_i·r_h[row(j) - row(i) + H - 1]`` equals
``a_i[row(j)]`` with ``a_i[x] = q̂_i·r_h[x - row(i) + H - 1]`` (H numbers per query), and likewise
``b_i[col(j)]`` for columns. Three implementations compute the same function from ``a`` and ``b``
(``impl=``, see :func:`choose_impl` for what ``"auto"`` picks and why):

- ``"sdpa"``: one ``scaled_dot_product_attention`` call on ``[q, a, b] · [k, onehot(row), onehot(col)]``
  (O(N) memory); on CUDA the head size is zero-padded so a fused kernel accepts it
  (:func:`sdpa_head_size`).
- ``"flex"``: ``flex_attention`` with a ``score_mod`` adding ``a`` and ``b`` by key index (head size
  stays d), compiled. The CPU kernel has no backward in torch 2.14 and no float64.
- ``"explicit"``: the textbook (B, heads, N, N) logits.

Any input size works: tables trained at ``feat_size`` are linearly resized to the needed length
(2L'-1 for relative, L' for absolute) on the fly, and a checkpoint made at another ``feat_size``
is resized the same way when loaded.
"""
import contextlib
import logging
import warnings
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RelPosMHSA", "resize_pos_table", "rel_pos_attention", "choose_impl", "sdpa_head_size",
           "sdpa_kernel_name", "IMPLS", "attention_as_op"]

_log = logging.getLogger(__name__)

IMPLS = ("auto", "sdpa", "flex", "explicit")
POS_KINDS = ("relative", "absolute", "none")


# ---------------------------------------------------------------------- position tables
def resize_pos_table(table: torch.Tensor, length: int) -> torch.Tensor:
    """Linearly resize a (L, d) position table to (length, d) (align_corners=False)."""
    # (L, d) -> (1, d, L) -> (1, d, length) -> (length, d)
    return F.interpolate(table.t()[None], size=length, mode="linear", align_corners=False)[0].t()


def _needs_resize(table: torch.Tensor, length: int) -> bool:
    # Under tracing/compilation/export/scripting the input size may be symbolic: always take the
    # resize path there (resizing to the same length is exactly the identity), so no guard on H/W.
    if torch.jit.is_scripting():
        return True
    else:
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
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


# ---------------------------------------------------------------------- which implementation
def sdpa_head_size(width: int, device_type: str) -> int:
    """Head size the augmented q/k/v are zero-padded to (zero columns change no dot product).

    CUDA's fused kernels refuse head sizes that are not a multiple of 8 (memory-efficient kernel
    in half precision; 4 in fp32, so 8 serves both) and then SDPA silently runs its math kernel,
    which materialises the N x N logits (measured: 50x84 tokens give d+H+W = 262 for d = 128).
    The CPU flash kernel takes any head size, so padding there would only add work.
    """
    if device_type != "cuda":
        return width
    return (width + 7) // 8 * 8


def sdpa_kernel_name(width: int, dtype: torch.dtype, device_type: str) -> str:
    """The kernel SDPA can use for a padded head size: flash takes half precision up to 256,
    the memory-efficient kernel any multiple of 8 (no TF32 in fp32); the CPU has one flash kernel."""
    if device_type != "cuda":
        return "cpu-flash"
    half = dtype == torch.float16 or dtype == torch.bfloat16
    return "flash" if half and width <= 256 else "efficient"


# CPU, measured with `botnet bench --attn-impl explicit,sdpa` and `--attn-impl flex --attn-modes fwd`
# (time ratio to timm BottleneckAttn in the same run, dim 512, 4 heads, fp32, peak-memory ratio in
# brackets; 2-core VM under load; benchmarks/results/cpu-attention-{impls,flex}.md):
#
#   tokens x batch   mode      explicit        sdpa            flex (compiled)
#   14x14 x 8        fwd       0.98 (0.71)     1.15 (0.74)     1.02
#   14x14 x 8        fwd+bwd   1.00 (0.99)     0.75 (1.16)     no CPU backward
#   32x32 x 8        fwd       0.64 (0.89)     0.64 (0.31)     0.82
#   32x32 x 8        fwd+bwd   0.90 (0.99)     0.86 (0.54)     no CPU backward
#   64x64 x 2        fwd       0.79 (0.96)     0.50 (0.12)     1.01
#   64x64 x 2        fwd+bwd   0.89 (0.99)     0.91 (0.21)     no CPU backward
#
# flex on the CPU: every new (H, W) costs a compilation of ~10-15 s (dynamic shapes fail to
# compile in torch 2.14's Inductor), no backward, no float64: auto never picks it there.
#
# CUDA, from H200 measurements of the earlier layer (torch 2.11; not re-measured with this code; the sdpa
# figures are the path before padding, timm = explicit-like): bf16 fwd+bwd time sdpa/timm 1.13 at
# 14x14 x 128, 0.49 at 32x32 x 32, 0.31 at 64x64 x 8; fp32 fwd+bwd 1.54 / 1.78 / 2.52 (the
# efficient kernel has no TF32) but peak memory 0.50 / 0.18 at 32x32 / 64x64.
def choose_impl(device_type: str, dtype: torch.dtype, tokens: int, grad: bool) -> str:
    """What ``impl="auto"`` runs: a rule from the measurements in the table above (the limits are
    literals: TorchScript compiles this function and cannot read module-level numbers)."""
    if device_type == "cuda":
        if dtype == torch.float16 or dtype == torch.bfloat16:
            # 14x14 (196 tokens): sdpa was 1.13x timm's time in bf16 fwd+bwd; 32x32 up: 0.49 and less.
            return "explicit" if tokens <= 196 else "sdpa"
        # fp32: sdpa's efficient kernel has no TF32 (1.5-2.5x timm's time), so explicit below
        # 32x32; from 32x32 up the O(N) memory of sdpa (0.50 / 0.18 of timm's peak) decides.
        return "explicit" if tokens < 1024 else "sdpa"
    # CPU: sdpa at every measured size, with and without grad (table above); explicit only ties
    # at 14x14 and 32x32 and costs N x N memory.
    return "sdpa"  # CPU, meta (counting), others: the O(N)-memory path


# ---------------------------------------------------------------------- the shared pieces
def _project(x: torch.Tensor, weight: torch.Tensor, heads: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, C, H, W) -> unscaled q, k, v, each a (B, heads, N, d) view of one token-major GEMM.

    (B, N, 3C) = x_tokens @ W^T reads a channels_last input as it is; each head's q/k/v rows are
    then contiguous in d.
    """
    B, C, H, W = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
    d = C // heads
    tokens = x.flatten(2).transpose(1, 2)  # (B, N, C); a view for channels_last input
    qkv = F.linear(tokens, weight.reshape(3 * C, C)).view(B, H * W, 3, heads, d)
    parts = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    return parts[0], parts[1], parts[2]


def _rel_tables(x: torch.Tensor, r_h: torch.Tensor, r_w: torch.Tensor, H: int, W: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """R_h (H, H, d) and R_w (W, W, d) in x's dtype: R_h[r, j] = r_h[j - r + H - 1], the table row for
    query row r and key row j (likewise for columns), from the tables resized to this map."""
    R_h = _fit_table(r_h, 2 * H - 1)[_rel_index(H, x.device)].to(x.dtype)
    R_w = _fit_table(r_w, 2 * W - 1)[_rel_index(W, x.device)].to(x.dtype)
    return R_h, R_w


def _rel_terms(q: torch.Tensor, R_h: torch.Tensor, R_w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """a (B, heads, N, H) and b (B, heads, N, W): the unscaled relative logits per key row / column."""
    B, nh, N, d = q.shape[0], q.shape[1], q.shape[2], q.shape[3]
    H, W = R_h.shape[0], R_w.shape[0]
    R_h, R_w = R_h.to(q.dtype), R_w.to(q.dtype)  # (under autocast q is in the lower precision)
    qg = q.reshape(B, nh, H, W, d)
    a = torch.einsum("bnhwd,hxd->bnhwx", qg, R_h).reshape(B, nh, N, H)
    b = torch.einsum("bnhwd,wyd->bnhwy", qg, R_w).reshape(B, nh, N, W)
    return a, b


def _explicit_logits(q: torch.Tensor, k: torch.Tensor, a: Optional[torch.Tensor], b: Optional[torch.Tensor],
                     scale: float) -> torch.Tensor:
    """The full (B, heads, N, N) logits (key j = (x, y) -> x * W + y)."""
    logits = (q * scale) @ k.transpose(-1, -2)
    if a is not None and b is not None:
        B, nh, N, H, W = a.shape[0], a.shape[1], a.shape[2], a.shape[3], b.shape[3]
        bias = (a * scale).reshape(B, nh, N, H, 1) + (b * scale).reshape(B, nh, N, 1, W)
        logits = logits + bias.reshape(B, nh, N, N)
    return logits


def _attend_explicit(q, k, v, a: Optional[torch.Tensor], b: Optional[torch.Tensor], scale: float) -> torch.Tensor:
    return _explicit_logits(q, k, a, b, scale).softmax(dim=-1) @ v


def _attend_sdpa(q, k, v, a: Optional[torch.Tensor], b: Optional[torch.Tensor], scale: float) -> torch.Tensor:
    """One SDPA call on the augmented q/k (zero-padded to a fused-kernel head size on CUDA)."""
    d = q.shape[-1]
    if a is None or b is None:
        return F.scaled_dot_product_attention(q.contiguous(), k.contiguous(), v.contiguous(), scale=scale)
    B, nh, N, H, W = q.shape[0], q.shape[1], q.shape[2], a.shape[3], b.shape[3]
    onehot = _onehot_keys(H, W, k.dtype, k.device)  # (N, H + W): [onehot(row j), onehot(col j)]
    qa = torch.cat([q, a, b], dim=-1)
    ka = torch.cat([k, onehot.expand(B, nh, N, H + W)], dim=-1)
    pad = 0
    if q.device.type == "cuda":  # the CPU flash kernel takes any head size: no branch on sizes there
        width = d + H + W
        pad = sdpa_head_size(width, "cuda") - width
        qa, ka = F.pad(qa, [0, pad]), F.pad(ka, [0, pad])
    va = F.pad(v, [0, H + W + pad])  # one head size for q, k and v; the extra outputs are dropped
    return F.scaled_dot_product_attention(qa, ka, va, scale=scale)[..., :d]


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
    """The layer given its position terms (:func:`_position_terms`); the output is NCHW-contiguous."""
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


# ---------------------------------------------------------------------- flex
_FLEX_COMPILED: dict = {}


def _flex_kernel(dtype: torch.dtype, device_type: str):
    """Compiled flex_attention, one per device type. On the CPU with static shapes (torch 2.14's
    Inductor fails to build the dynamic-shape CPU kernel: one compilation per (H, W)); elsewhere
    torch.compile's default, which turns sizes dynamic after the first recompilation. Eager
    inside an outer compilation, and for float64 on the CPU, which the CPU kernel refuses (the
    unfused reference then computes the same function)."""
    from torch.nn.attention.flex_attention import flex_attention

    if torch.compiler.is_compiling() or (device_type == "cpu" and dtype == torch.float64):
        return flex_attention, False
    if device_type not in _FLEX_COMPILED:
        _FLEX_COMPILED[device_type] = torch.compile(flex_attention, dynamic=False if device_type == "cpu" else None)
    return _FLEX_COMPILED[device_type], True


def _attend_flex(q, k, v, a: Optional[torch.Tensor], b: Optional[torch.Tensor], scale: float) -> torch.Tensor:
    if q.device.type == "cpu" and torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (q, k, v, a, b)):
        raise RuntimeError(
            "RelPosMHSA impl='flex' cannot train on the CPU: FlexAttention has no CPU backward in torch "
            f"{torch.__version__}; use impl='auto' or 'sdpa', or run under torch.no_grad()")
    kernel, compiled = _flex_kernel(q.dtype, q.device.type)
    score_mod = None
    if a is not None and b is not None:
        W = b.shape[-1]
        a_s, b_s = a * scale, b * scale

        def score_mod(score, bi, hi, qi, ki):  # add the query's terms for the key's row and column
            return score + a_s[bi, hi, qi, ki // W] + b_s[bi, hi, qi, ki % W]

    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    if compiled:
        return kernel(q, k, v, score_mod=score_mod, scale=scale)
    with warnings.catch_warnings():  # "called without torch.compile()": intended (float64 reference)
        warnings.simplefilter("ignore", UserWarning)
        return kernel(q, k, v, score_mod=score_mod, scale=scale)


# ---------------------------------------------------------------------- the layer's function
_LOGGED: set = set()


def _log_choice(chosen: str, x: torch.Tensor, tokens: int, grad: bool) -> None:
    """One debug line per distinct decision (not one per call)."""
    key = (chosen, x.device.type, x.dtype, tokens, grad)
    if key not in _LOGGED and _log.isEnabledFor(logging.DEBUG):
        _LOGGED.add(key)
        _log.debug("RelPosMHSA impl='auto' -> %s (%s, %s, %d tokens, grad=%s)", chosen, x.device.type,
                   x.dtype, tokens, grad)


def resolve_impl(impl: str, x: torch.Tensor, weight: torch.Tensor) -> str:
    """``impl`` with "auto" replaced by :func:`choose_impl`'s pick for this input."""
    if impl != "auto":
        return impl
    grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    tokens = x.shape[2] * x.shape[3]
    chosen = choose_impl(x.device.type, x.dtype, tokens, grad)
    if not torch.jit.is_scripting():
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):  # sizes may be symbolic there
            _log_choice(chosen, x, tokens, grad)
    return chosen


def _attend(chosen: str, q, k, v, a: Optional[torch.Tensor], b: Optional[torch.Tensor], scale: float) -> torch.Tensor:
    if chosen == "explicit":
        return _attend_explicit(q, k, v, a, b, scale)
    if chosen == "sdpa":
        return _attend_sdpa(q, k, v, a, b, scale)
    if chosen == "flex":
        if torch.jit.is_scripting():
            raise RuntimeError("RelPosMHSA impl='flex' cannot run in TorchScript; use 'sdpa' or 'explicit'")
        else:
            return _attend_flex(q, k, v, a, b, scale)
    raise ValueError("RelPosMHSA: unknown impl '" + chosen + "'; choose from auto, sdpa, flex, explicit")


def _position_terms(x: torch.Tensor, table_h: Optional[torch.Tensor], table_w: Optional[torch.Tensor], pos: str,
                    d: int) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(R_h, R_w, E) for an input x: relative tables (:func:`_rel_tables`) for pos "relative", the
    (H*W, d) key embedding E_h[row] + E_w[col] for "absolute"; None where they do not apply."""
    H, W = x.shape[2], x.shape[3]
    if table_h is None or table_w is None:
        return None, None, None
    if pos == "relative":
        R_h, R_w = _rel_tables(x, table_h, table_w, H, W)
        return R_h, R_w, None
    if pos == "absolute":
        e = _fit_table(table_h, H)[:, None, :] + _fit_table(table_w, W)[None, :, :]
        return None, None, e.reshape(H * W, d).to(x.dtype)
    return None, None, None


def _layer(x: torch.Tensor, weight: torch.Tensor, R_h: Optional[torch.Tensor], R_w: Optional[torch.Tensor],
           E: Optional[torch.Tensor], heads: int, scale: float, chosen: str) -> torch.Tensor:
    B, C, H, W = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
    q, k, v = _project(x, weight, heads)
    if E is not None:
        k = k + E.to(k.dtype)  # key position embedding: q̂·(k_j + E_h[x] + E_w[y]) (k may be autocast's dtype)
    a: Optional[torch.Tensor] = None
    b: Optional[torch.Tensor] = None
    if R_h is not None and R_w is not None:
        a, b = _rel_terms(q, R_h, R_w)
    out = _attend(chosen, q, k, v, a, b, scale)
    # -> (B, C, H, W) with channel = head*d + i, in the input's memory format (one copy either way)
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return out.transpose(1, 2).reshape(B, H, W, C).permute(0, 3, 1, 2)
    return out.transpose(-1, -2).reshape(B, C, H, W)


def rel_pos_attention(x: torch.Tensor, weight: torch.Tensor, table_h: Optional[torch.Tensor],
                      table_w: Optional[torch.Tensor], heads: int, pos: str, impl: str,
                      scale: float) -> torch.Tensor:
    """The whole layer as one function of its input and parameters (see the module docstring).

    ``pos`` "relative" takes ``table_h`` (2H'-1, d) / ``table_w`` (2W'-1, d), "absolute" (H', d) /
    (W', d); "none" ignores them. ``scale`` is d^-1/2 (a Python number, so traces keep no shape
    arithmetic for it). FX records a call of this function as one node (torch.fx.wrap).
    """
    if not torch.jit.is_tracing():  # a trace would record the check as a constant (and warn)
        _check_input(x, weight.shape[1])
    chosen = resolve_impl(impl, x, weight)
    R_h, R_w, E = _position_terms(x, table_h, table_w, pos, x.shape[1] // heads)
    as_op = False
    if not torch.jit.is_scripting():  # (TorchScript skips this block: it cannot read _AS_OP)
        as_op = _AS_OP[0]
    if as_op:
        return torch.ops.botnet.rel_pos_attention(x, weight, R_h, R_w, E, heads, scale)
    return _layer(x, weight, R_h, R_w, E, heads, scale, chosen)


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
        impl: "auto" (default; :func:`choose_impl` picks per device, dtype, tokens and grad mode),
            "sdpa", "flex" or "explicit" (see the module docstring). All compute the same function
            and have the same parameters.
        fused: the earlier switch, kept: False is impl="explicit", True is impl="sdpa".
    """

    __constants__ = ["heads", "pos", "scale", "_relative", "_absolute"]
    __jit_unused_properties__ = ["impl", "fused"]  # Python-side switches; TorchScript reads _impl

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
        fused: bool | None = None,
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
        if fused is not None:
            self.fused = fused
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

    @property
    def fused(self) -> bool:
        """Earlier switch, kept for callers: False is impl="explicit", True the O(N)-memory "sdpa"."""
        return self._impl != "explicit"

    @fused.setter
    def fused(self, value: bool) -> None:
        self.impl = "sdpa" if value else "explicit"

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
                _check_input(x, self.dim)
                impl = resolve_impl(impl, x, self.qkv.weight)
                self.last_impl = impl
        return rel_pos_attention(x, self.qkv.weight, table_h, table_w, self.heads, self.pos, impl, self.scale)

    @torch.no_grad()
    def attention_probs(self, x: torch.Tensor) -> torch.Tensor:
        """The explicit softmax weights, (B, heads, N, N). For visualisation and tests only."""
        q, k, _ = _project(x, self.qkv.weight, self.heads)
        tables = self._pos_tables()
        R_h, R_w, E = _position_terms(x, *(tables or [None, None]), self.pos, self.dim_head)
        a = b = None
        if R_h is not None and R_w is not None:
            a, b = _rel_terms(q, R_h, R_w)
        if E is not None:
            k = k + E.to(k.dtype)
        logits = _explicit_logits(q, k, a, b, self.scale)
        return logits.softmax(dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32))


def _check_input(x: torch.Tensor, dim: int) -> None:
    if x.dim() != 4 or x.shape[1] != dim:
        got = "(" + ", ".join([str(n) for n in x.shape]) + ")"
        raise ValueError("RelPosMHSA expects input of shape (B, " + str(dim) + ", H, W), got " + got)


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
