"""The ONNX export of RelPosMHSA (a Scan over query blocks): the layer's numbers at any grid, and no
intermediate tensor that grows with the square of the number of tokens."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

from botnet.export import export_onnx, onnx_attention  # noqa: E402
from botnet.layers import RelPosMHSA  # noqa: E402

DIM, HEADS = 32, 4
GRIDS = [(2, 6, 6), (1, 9, 7), (3, 5, 11)]  # (batch, H, W): 36, 63 and 55 tokens, two of them not square


def _layer(pos: str, dtype=torch.float64) -> RelPosMHSA:
    """Weights large enough that the softmax is far from uniform and the position terms matter."""
    torch.manual_seed(0)
    m = RelPosMHSA(DIM, HEADS, (6, 6), pos=pos).to(dtype).eval()
    with torch.no_grad():
        m.qkv.weight.normal_(0, 0.3)
        for p in m._pos_tables():
            p.normal_(0, 0.5)
    return m


def _export(m, path, **kw):
    x = torch.randn(2, DIM, 6, 6, dtype=next(m.parameters()).dtype)
    return export_onnx(m, path, x, min_size=2, **kw)


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("pos", ["relative", "absolute", "none"])
def test_scan_export_computes_the_layer_at_every_grid(pos, tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_attention, "BLOCK", 16)  # 3-4 steps per grid, some with padded rows
    m = _layer(pos)
    sess = _session(_export(m, tmp_path / "layer.onnx"))
    g = torch.Generator().manual_seed(1)
    for b, h, w in GRIDS:
        x = torch.randn(b, DIM, h, w, dtype=torch.float64, generator=g)
        with torch.no_grad():
            ref = m(x).numpy()
        out = sess.run(None, {"images": x.numpy()})[0]
        # float64 throughout; at other grids than the trace's (6 x 6) the exporter's own translation of the
        # table resize (F.interpolate) computes its coordinates in float32: ~2e-6, the same with
        # attention="sdpa", against >= 1e-2 for a misplaced position term (next test)
        tol = 1e-12 if (h, w) == (6, 6) else 1e-5
        assert out.shape == ref.shape and np.abs(out - ref).max() < tol, (pos, (b, h, w))


def test_position_tables_change_the_compared_output():
    # guards the test above: rows and columns of the relative table matter at these sizes
    m = _layer("relative")
    x = torch.randn(1, DIM, 9, 7, dtype=torch.float64)
    with torch.no_grad():
        ref = m(x)
        m.rel_w.copy_(m.rel_w.flip(0))
        assert (m(x) - ref).abs().max() > 1e-2


def test_scan_export_holds_no_custom_op(tmp_path):
    onnx = pytest.importorskip("onnx")
    proto = onnx.load(str(_export(_layer("relative", torch.float32), tmp_path / "layer.onnx")))
    ops = [(n.domain, n.op_type) for n in proto.graph.node]
    assert ops.count(("", "Scan")) == 1
    assert not any(d not in ("", "ai.onnx") for d, _ in ops)
    assert {o.domain for o in proto.opset_import} <= {"", "ai.onnx"}


def _output_sizes(path, x: torch.Tensor) -> dict[str, list[int]]:
    """{node name: elements of each tensor it writes} for every node (Scan bodies included), from ONNX
    Runtime's profile of one run."""
    so = ort.SessionOptions()
    so.enable_profiling = True
    so.profile_file_prefix = str(path.with_suffix(""))
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    sess.run(None, {"images": x.numpy()})
    with open(sess.end_profiling()) as f:
        events = json.load(f)
    sizes = {}
    for e in events:
        if e.get("cat") == "Node":
            outs = e["args"].get("output_type_shape", [])
            sizes.setdefault(e["name"], []).extend(int(np.prod(s)) for out in outs for s in out.values())
    assert any(sizes.values()), "no node events in the profile"
    return sizes


def _largest_intermediate(path, x: torch.Tensor) -> int:
    """Elements of the largest tensor any node (Scan bodies included) writes."""
    return max(n for sizes in _output_sizes(path, x).values() for n in sizes)


def test_no_intermediate_grows_with_the_square_of_the_tokens(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_attention, "BLOCK", 64)
    m = _layer("relative", torch.float32)
    scan = _export(m, tmp_path / "scan.onnx")
    sdpa = _export(m, tmp_path / "sdpa.onnx", attention="sdpa")
    small, large = torch.randn(1, DIM, 16, 16), torch.randn(1, DIM, 32, 32)  # 256 and 1024 tokens
    n = 32 * 32
    # the exporter's own translation holds (heads, N, N) logits: the check below would see them
    assert _largest_intermediate(sdpa, large) >= HEADS * n * n
    s_small, s_large = _largest_intermediate(scan, small), _largest_intermediate(scan, large)
    assert s_large == HEADS * 64 * n  # one step's logits: heads x block x N
    assert s_large <= 4 * s_small  # 4x the tokens, 4x the largest tensor: linear


def test_scan_steps_copy_neither_keys_nor_values(tmp_path, monkeypatch):
    # each step reads k and v where the projection wrote them: v's transpose in the body is fused into
    # the MatMul by ONNX Runtime, so no step writes a tensor the size of k or v (heads x N x d)
    monkeypatch.setattr(onnx_attention, "BLOCK", 64)
    sizes = _output_sizes(_export(_layer("relative", torch.float32), tmp_path / "scan.onnx"), torch.randn(1, DIM, 32, 32))
    body = {name: n for name, n in sizes.items() if "/body/" in name}
    assert len(body) >= 4, sorted(sizes)
    kv = HEADS * 32 * 32 * (DIM // HEADS)
    assert all(kv not in n for n in body.values()), {name: n for name, n in body.items() if kv in n}
