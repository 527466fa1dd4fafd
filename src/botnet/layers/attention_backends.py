"""The attention implementations behind RelPosMHSA and the rule choosing between them.

The position term is never an N x N input: ``q̂_i·r_h[row(j) - row(i) + H - 1]`` equals
``a_i[row(j)]`` with ``a_i[x] = q̂_i·r_h[x - row(i) + H - 1]`` (H numbers per query,
:func:`rel_terms`), and likewise ``b_i[col(j)]`` for columns. Three implementations compute the same
function from ``a`` and ``b`` (``impl=``, see :func:`choose_impl` for what ``"auto"`` picks and why):

- ``"sdpa"``: one ``scaled_dot_product_attention`` call on ``[q, a, b] · [k, onehot(row), onehot(col)]``
  (O(N) memory); on CUDA the head size is zero-padded so a fused kernel accepts it
  (:func:`sdpa_head_size`).
- ``"flex"``: ``flex_attention`` with a ``score_mod`` adding ``a`` and ``b`` by key index (head size
  stays d), compiled. The CPU kernel has no backward in torch 2.14 and no float64.
- ``"explicit"``: the textbook (B, heads, N, N) logits.

:func:`attend` runs the one chosen; :func:`resolve_impl` turns ``"auto"`` into a choice for an input.
"""
import logging
import warnings
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ["IMPLS", "choose_impl", "resolve_impl", "sdpa_head_size", "sdpa_kernel_name", "project", "rel_terms",
           "explicit_logits", "attend"]

_log = logging.getLogger(__name__)

IMPLS = ("auto", "sdpa", "flex", "explicit")


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
# CUDA (H200, torch 2.11; sdpa measured without the head-size padding of sdpa_head_size, timm =
# explicit-like): bf16 fwd+bwd time sdpa/timm 1.13 at 14x14 x 128, 0.49 at 32x32 x 32, 0.31 at
# 64x64 x 8; fp32 fwd+bwd 1.54 / 1.78 / 2.52 (the efficient kernel has no TF32) but peak memory
# 0.50 / 0.18 at 32x32 / 64x64.
def choose_impl(device_type: str, dtype: torch.dtype, tokens: int, grad: bool) -> str:
    """What ``impl="auto"`` runs: a rule from the measurements in the table above (the limits are
    literals: TorchScript compiles this function and cannot read module-level numbers)."""
    if device_type == "cuda":
        if dtype == torch.float16 or dtype == torch.bfloat16:
            # 14x14 (196 tokens): sdpa measured 1.13x timm's time in bf16 fwd+bwd; 32x32 up: 0.49 and less.
            return "explicit" if tokens <= 196 else "sdpa"
        # fp32: sdpa's efficient kernel has no TF32 (1.5-2.5x timm's time), so explicit below
        # 32x32; from 32x32 up the O(N) memory of sdpa (0.50 / 0.18 of timm's peak) decides.
        return "explicit" if tokens < 1024 else "sdpa"
    # CPU: sdpa at every measured size, with and without grad (table above); explicit only ties
    # at 14x14 and 32x32 and costs N x N memory.
    return "sdpa"  # CPU, meta (counting), others: the O(N)-memory path


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


# ---------------------------------------------------------------------- the shared pieces
def project(x: torch.Tensor, weight: torch.Tensor, heads: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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


def rel_terms(q: torch.Tensor, R_h: torch.Tensor, R_w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """a (B, heads, N, H) and b (B, heads, N, W): the unscaled relative logits per key row / column."""
    B, nh, N, d = q.shape[0], q.shape[1], q.shape[2], q.shape[3]
    H, W = R_h.shape[0], R_w.shape[0]
    R_h, R_w = R_h.to(q.dtype), R_w.to(q.dtype)  # (under autocast q is in the lower precision)
    qg = q.reshape(B, nh, H, W, d)
    a = torch.einsum("bnhwd,hxd->bnhwx", qg, R_h).reshape(B, nh, N, H)
    b = torch.einsum("bnhwd,wyd->bnhwy", qg, R_w).reshape(B, nh, N, W)
    return a, b


# ---------------------------------------------------------------------- explicit
def explicit_logits(q: torch.Tensor, k: torch.Tensor, a: Optional[torch.Tensor], b: Optional[torch.Tensor],
                    scale: float) -> torch.Tensor:
    """The full (B, heads, N, N) logits (key j = (x, y) -> x * W + y)."""
    logits = (q * scale) @ k.transpose(-1, -2)
    if a is not None and b is not None:
        B, nh, N, H, W = a.shape[0], a.shape[1], a.shape[2], a.shape[3], b.shape[3]
        bias = (a * scale).reshape(B, nh, N, H, 1) + (b * scale).reshape(B, nh, N, 1, W)
        logits = logits + bias.reshape(B, nh, N, N)
    return logits


def _attend_explicit(q, k, v, a: Optional[torch.Tensor], b: Optional[torch.Tensor], scale: float) -> torch.Tensor:
    return explicit_logits(q, k, a, b, scale).softmax(dim=-1) @ v


# ---------------------------------------------------------------------- sdpa
def _onehot_keys(H: int, W: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(H*W, H+W): row j*W+y holds [onehot(x), onehot(y)] for key position (x, y).

    Built with expand/reshape only (no repeat_interleave): the ONNX exporter translates
    repeat_interleave with a symbolic count wrongly, which breaks dynamic-size ONNX graphs.
    """
    eye_h = torch.eye(H, dtype=dtype, device=device)
    eye_w = torch.eye(W, dtype=dtype, device=device)
    rows = eye_h[:, None, :].expand(H, W, H)
    cols = eye_w[None, :, :].expand(H, W, W)
    return torch.cat([rows, cols], dim=-1).reshape(H * W, H + W)


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


# ---------------------------------------------------------------------- dispatch
def attend(chosen: str, q, k, v, a: Optional[torch.Tensor], b: Optional[torch.Tensor], scale: float) -> torch.Tensor:
    """softmax(scale·(q·k_j + a[row j] + b[col j])) v by the implementation ``chosen`` (a name from
    :data:`IMPLS` other than "auto", which :func:`resolve_impl` replaces)."""
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
