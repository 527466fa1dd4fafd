"""Memory-linear relative attention in exported ONNX graphs.

Exported as it is, the layer's ``scaled_dot_product_attention`` becomes MatMul -> Softmax -> MatMul
on the augmented q/k (or, from opset 23, an ``Attention`` node that ONNX Runtime's CPU kernel
computes the same way), which materialises the (batch, heads, N, N) logits: 4096 x 4096 per head
for a 1024 px image. Instead, while :func:`botnet.layers.functional.attention_as_op` is on, each
RelPosMHSA is exported as one ``botnet.RelPosAttention(x, weight, R_h?, R_w?, E?)`` node
(:func:`translation_table`), which :func:`lower_rel_pos_attention` then replaces with standard ops:

- q, k, v channel-major from one MatMul ``W (3C, C) @ x (B, C, N)`` (d^-1/2 folded into W's query
  rows); the relative logits ``a = q·R_h`` (per key row) and ``b = q·R_w`` (per key column) as
  batched MatMuls;
- a ``Scan`` over ceil(N / block) equal blocks of at most ``block`` queries, each computing its
  (block x N) logits at head size d, adding ``a`` and ``b`` by broadcasting, Softmax, MatMul with v
  (k and v read in place, channel-major; the block's output transposed to channel-major in the step).

Peak memory is a few heads x block x N floats, linear in N, and the file holds no custom op.
Needs opset >= 15 (the exporter writes 18 and up); checked with ONNX Runtime 1.32.
"""
from __future__ import annotations

import itertools

import numpy as np

__all__ = ["BLOCK", "translation_table", "lower_rel_pos_attention"]

BLOCK = 512  # most queries per Scan step (docs/export.md: 256 is slower, 768 raises the peak at 1024 px)
DOMAIN = "botnet"
OP = "RelPosAttention"


def translation_table() -> dict:
    """``custom_translation_table`` for ``torch.onnx.export``: ``botnet::rel_pos_attention`` -> one
    ``botnet.RelPosAttention`` node, for :func:`lower_rel_pos_attention`."""
    import onnx_ir
    import torch
    from onnx.defs import OpSchema
    from onnxscript.values import Op, Opset

    import botnet.layers.functional  # noqa: F401  (registers the op)

    param, optional = OpSchema.FormalParameter, OpSchema.FormalParameterOption.Optional
    schema = OpSchema(
        OP, DOMAIN, 1,
        inputs=[param("x", "T"), param("weight", "T"), param("R_h", "T", param_option=optional),
                param("R_w", "T", param_option=optional), param("E", "T", param_option=optional)],
        outputs=[param("out", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)", "tensor(double)"], "")],
        attributes=[OpSchema.Attribute("heads", OpSchema.AttrType.INT, ""),
                    OpSchema.Attribute("scale", OpSchema.AttrType.TENSOR, "")],  # float64: exact for double models
    )
    op = Op(Opset(DOMAIN, 1), OP, schema)

    def rel_pos_attention(x, weight, R_h=None, R_w=None, E=None, heads: int = 1, scale: float = 1.0):
        return op(x, weight, R_h, R_w, E, heads=heads, scale=onnx_ir.tensor(np.array(scale, dtype=np.float64)))

    return {torch.ops.botnet.rel_pos_attention.default: rel_pos_attention}


class _Builder:
    """Nodes with names unique in the model (prefix + counter)."""

    def __init__(self, prefix: str):
        from onnx import helper

        self.h, self.prefix, self.nodes, self._n = helper, prefix, [], itertools.count()

    def name(self, what: str) -> str:
        return f"{self.prefix}{what}_{next(self._n)}"

    def op(self, op_type: str, *inputs: str, **attrs) -> str:
        out = self.name(op_type.lower())
        self.nodes.append(self.h.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def const(self, values, dtype=np.int64) -> str:
        from onnx import numpy_helper

        out = self.name("const")
        tensor = numpy_helper.from_array(np.array(values, dtype=dtype), out)
        self.nodes.append(self.h.make_node("Constant", [], [out], name=out, value=tensor))
        return out


def _body(prefix: str, elem_type: int, k: str, v: str, relative: bool):
    """Scan body: a block of scaled queries (B, heads, rows, d) -> softmax(q·k + a[row] + b[col]) · v as
    (B, heads, d, rows), with k and v (B, heads, d, N) from the outer graph.

    v stays channel-major: its transpose here is fused into the MatMul by ONNX Runtime (a transposed
    pack of v, which each step packs anyway), where a transposed copy outside is one more pass over
    v. The output is transposed here, on the block in cache, so the transpose outside moves whole
    rows of ``rows`` numbers instead of single ones.
    """
    from onnx import helper

    g = _Builder(prefix + "body/")
    qb, ab, bb = g.name("q"), g.name("a"), g.name("b")
    logits = g.op("MatMul", qb, k)  # (B, heads, rows, N)
    if relative:
        # (B, heads, rows, H, 1) + (B, heads, rows, 1, W) -> the block's (rows, N) bias, key j = x * W + y
        bias = g.op("Add", g.op("Unsqueeze", ab, g.const([-1])), g.op("Unsqueeze", bb, g.const([-2])))
        logits = g.op("Add", logits, g.op("Reshape", bias, g.op("Shape", logits)))
    out = g.op("MatMul", g.op("Softmax", logits, axis=-1), g.op("Transpose", v, perm=[0, 1, 3, 2]))
    out = g.op("Transpose", out, perm=[0, 1, 3, 2])
    inputs = [helper.make_tensor_value_info(n, elem_type, None) for n in ([qb, ab, bb] if relative else [qb])]
    return helper.make_graph(g.nodes, prefix + "body", inputs, [helper.make_tensor_value_info(out, elem_type, None)])


def _rel_terms(g: _Builder, q: str, r_h: str, r_w: str) -> tuple[str, str]:
    """a (B, heads, N, H) = q·R_h[row(q), :] and b (B, heads, N, W) = q·R_w[col(q), :], as batched
    MatMuls over query rows / columns (the exporter's Einsum ran several times slower in ONNX Runtime)."""
    h_len, w_len = g.op("Shape", r_h, start=0, end=1), g.op("Shape", r_w, start=0, end=1)
    grid = g.op("Reshape", q, g.op("Concat", g.const([0, 0]), h_len, w_len, g.const([-1]), axis=0))  # (B, nh, H, W, d)
    a = g.op("MatMul", grid, g.op("Transpose", r_h, perm=[0, 2, 1]))  # (B, heads, H, W, H): batched over rows
    b = g.op("MatMul", g.op("Transpose", grid, perm=[0, 1, 3, 2, 4]), g.op("Transpose", r_w, perm=[0, 2, 1]))
    b = g.op("Transpose", b, perm=[0, 1, 3, 2, 4])  # (B, heads, H, W, W)
    tokens = g.const([0, 0, -1])
    return (g.op("Reshape", a, g.op("Concat", tokens, h_len, axis=0)),
            g.op("Reshape", b, g.op("Concat", tokens, w_len, axis=0)))


def _qkv(g: _Builder, x: str, w: str, heads: int, scale: float, n_tok: str, elem_type: int) -> tuple[str, str, str]:
    """Channel-major q (scaled), k, v, each (B, heads, d, N), from one MatMul W (3C, C) @ x (B, C, N):
    k is then already the (d, N) operand of q·k, and x is not copied token-major. The scale is folded
    into W's query rows (constant-folded by ONNX Runtime, W being an initializer)."""
    w2 = g.op("Reshape", w, g.const([0, -1]))
    c3 = g.op("Shape", w2, start=0, end=1)
    c = g.op("Div", c3, g.const([3]))
    scale_t = g.op("Cast", g.const(scale, np.float64), to=elem_type)
    w_q = g.op("Mul", g.op("Slice", w2, g.const([0]), c, g.const([0])), scale_t)
    w2 = g.op("Concat", w_q, g.op("Slice", w2, c, c3, g.const([0])), axis=0)
    qkv = g.op("MatMul", w2, g.op("Reshape", x, g.const([0, 0, -1])))
    qkv = g.op("Reshape", qkv, g.op("Concat", g.const([0, 3, heads, -1]), n_tok, axis=0))  # (B, 3, nh, d, N)
    q, k, v = (g.op("Gather", qkv, g.const(i), axis=1) for i in range(3))
    return q, k, v


def _lower_node(node, prefix: str, elem_type: int, block: int) -> list:
    """The nodes replacing one RelPosAttention node (same inputs, same output name)."""
    from onnx import numpy_helper

    names = list(node.input) + [""] * (5 - len(node.input))
    x, w, r_h, r_w, e = (n or None for n in names[:5])
    attrs = {attr.name: attr for attr in node.attribute}
    relative = r_h is not None and r_w is not None
    g = _Builder(prefix)
    n_tok = g.op("Mul", g.op("Shape", x, start=2, end=3), g.op("Shape", x, start=3, end=4))
    scale = float(numpy_helper.to_array(attrs["scale"].t))
    q, k, v = _qkv(g, x, w, attrs["heads"].i, scale, n_tok, elem_type)
    if e is not None:
        k = g.op("Add", k, g.op("Transpose", e, perm=[1, 0]))  # absolute key embedding (N, d)
    q = g.op("Transpose", q, perm=[0, 1, 3, 2])  # (B, heads, N, d)
    # ceil(N / block) steps of equal size ceil(N / steps) <= block (fewer than `steps` padded rows)
    steps = g.op("Div", g.op("Add", n_tok, g.const([block - 1])), g.const([block]))
    rows = g.op("Div", g.op("Sub", g.op("Add", n_tok, steps), g.const([1])), steps)
    pad_end = g.op("Sub", g.op("Mul", steps, rows), n_tok)
    pads = g.op("Concat", g.const([0, 0, 0, 0, 0, 0]), pad_end, g.const([0]), axis=0)
    scanned = []
    for t in ([q, *_rel_terms(g, q, r_h, r_w)] if relative else [q]):
        # (B, heads, N, X) -> zero rows up to steps * rows -> (steps, B, heads, rows, X)
        shape = g.op("Concat", g.const([0, 0, -1]), rows, g.op("Shape", t, start=3, end=4), axis=0)
        blocks = g.op("Reshape", g.op("Pad", t, pads), shape)
        scanned.append(g.op("Transpose", blocks, perm=[2, 0, 1, 3, 4]))
    outs = g.op("Scan", *scanned, body=_body(prefix, elem_type, k, v, relative), num_scan_inputs=len(scanned))
    # (steps, B, heads, d, rows) -> (B, heads, d, steps * rows) -> the N real tokens -> (B, C, H, W)
    flat = g.op("Reshape", g.op("Transpose", outs, perm=[1, 2, 3, 0, 4]), g.const([0, 0, 0, -1]))
    tokens = g.op("Slice", flat, g.const([0]), n_tok, g.const([3]))
    g.nodes.append(g.h.make_node("Reshape", [tokens, g.op("Shape", x)], [node.output[0]], name=prefix + "out"))
    return g.nodes


def _elem_type(graph, name: str) -> int:
    from onnx import TensorProto

    for vi in itertools.chain(graph.value_info, graph.input, graph.output):
        if vi.name == name and vi.type.tensor_type.elem_type:
            return vi.type.tensor_type.elem_type
    return TensorProto.FLOAT


def lower_rel_pos_attention(model, *, block: int | None = None) -> int:
    """Replace every ``botnet.RelPosAttention`` node of ``model`` (a ModelProto, changed in place) by
    standard ops (see the module docstring), with at most ``block`` (default :data:`BLOCK`) queries per
    Scan step; returns how many were replaced."""
    block = block or BLOCK
    graph = model.graph
    nodes, count = [], 0
    for node in graph.node:
        if node.domain == DOMAIN and node.op_type == OP:
            nodes += _lower_node(node, f"botnet_relpos{count}/", _elem_type(graph, node.input[0]), block)
            count += 1
        else:
            nodes.append(node)
    if any(n.domain == DOMAIN for f in model.functions for n in f.node):
        raise RuntimeError(f"{DOMAIN}.{OP} inside an ONNX function: not lowered (export with optimize=True)")
    del graph.node[:]
    graph.node.extend(nodes)
    keep = [o for o in model.opset_import if o.domain != DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    return count
