"""One BoTNet attention layer in ONNX Runtime (CPU): botnet's Scan export against ONNX Runtime's fused
``com.microsoft.MultiHeadAttention`` kernel, with and without the relative position term.

It answers one question of docs/export.md: how far a fused kernel could take the exported attention.

- ``scan``: ``RelPosMHSA(dim, heads, (G, G))`` exported by botnet (``--onnx-attention scan``), x -> out.
- ``mha-relative``: ONNX Runtime's ``MultiHeadAttention`` (flash kernel on the CPU) on q/k augmented
  with the relative terms (head size d + H + W; v at d), plus the q/k/v projection MatMul. The
  augmented q/k are fed in, so their construction is not timed: a lower bound for that route. Its
  output is checked against the layer's (max abs difference printed).
- ``mha-plain``: the same kernel at head size d with no position term, plus the projection: what a
  fused kernel that added the relative bias for free would cost.

Rounds are interleaved (scan, mha-relative, mha-plain, ...); per-round ratios to ``scan``, median.
Writes NAME.json and NAME.md. Usage (from the repository root)::

    .venv/bin/python benchmarks/onnx_attention_layer.py --grid 64 --rounds 14 --name onnx-attention-layer
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _mha_graph(path: str, dim: int, heads: int, n: int, head_qk: int, head_v: int) -> None:
    """x (1, dim, N) -> [MultiHeadAttention(q, k, v), W @ x]: the projection is an output of its own, so
    it is computed and timed like the Scan layer's, without feeding the attention (q/k/v are inputs)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    f = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info("x", f, [1, dim, n]),
              helper.make_tensor_value_info("q", f, [1, n, heads * head_qk]),
              helper.make_tensor_value_info("k", f, [1, n, heads * head_qk]),
              helper.make_tensor_value_info("v", f, [1, n, heads * head_v])]
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((3 * dim, dim)).astype(np.float32), "w")
    nodes = [helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["o"], domain="com.microsoft",
                              num_heads=heads, scale=1.0),
             helper.make_node("MatMul", ["w", "x"], ["qkv"])]
    outputs = [helper.make_tensor_value_info("o", f, None), helper.make_tensor_value_info("qkv", f, None)]
    graph = helper.make_graph(nodes, "mha", inputs, outputs, initializer=[w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("com.microsoft", 1)]),
              path)


def _augmented_inputs(layer, x: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """The MultiHeadAttention feeds that compute ``layer(x)``: q·[k, onehot] + [a, b] in one product."""
    from botnet.layers.attention_backends import _onehot_keys, project, rel_terms
    from botnet.layers.position_tables import position_terms

    B, C, H, W = x.shape
    q, k, v = project(x, layer.qkv.weight, layer.heads)  # (B, heads, N, d)
    R_h, R_w, _ = position_terms(x, layer.rel_h, layer.rel_w, "relative", layer.dim_head)
    a, b = rel_terms(q, R_h, R_w)
    s = layer.scale
    qa = torch.cat([q, a, b], dim=-1) * s
    ka = torch.cat([k, _onehot_keys(H, W, k.dtype, k.device).expand(B, layer.heads, H * W, H + W)], dim=-1)
    tokens = lambda t: t.transpose(1, 2).reshape(B, H * W, -1).contiguous().numpy()  # noqa: E731
    return {"q": tokens(qa), "k": tokens(ka), "v": tokens(v)}, v


def main(argv=None) -> int:
    import onnxruntime as ort

    from botnet.export import export_onnx
    from botnet.layers import RelPosMHSA

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--grid", type=int, default=64, help="the attention grid G (G x G tokens; 64: BoT50's first c5 block at 1024 px)")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--rounds", type=int, default=14)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--name", default="onnx-attention-layer")
    args = p.parse_args(argv)
    if args.grid < 2 or args.dim % args.heads or args.rounds < 3:
        print("onnx_attention_layer: need --grid >= 2, --dim divisible by --heads and --rounds >= 3", file=sys.stderr)
        return 2

    torch.manual_seed(0)
    G, d = args.grid, args.dim // args.heads
    n = G * G
    layer = RelPosMHSA(args.dim, args.heads, (G, G), pos="relative").eval()
    with torch.no_grad():
        for t in (layer.rel_h, layer.rel_w):
            t.normal_(0, 0.5)  # position terms that matter in the output check
        x = torch.randn(1, args.dim, G, G)
        ref = layer(x)
        feeds_rel, v = _augmented_inputs(layer, x)
    rng = np.random.default_rng(1)
    feeds_plain = {k: rng.standard_normal(a.shape[:2] + (args.heads * d,)).astype(np.float32)
                   for k, a in feeds_rel.items()}
    x_tok = x.reshape(1, args.dim, n).numpy()

    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    with tempfile.TemporaryDirectory(prefix="botnet-onnx-layer-") as tmp:
        export_onnx(layer, f"{tmp}/scan.onnx", x, min_size=2)
        _mha_graph(f"{tmp}/rel.onnx", args.dim, args.heads, n, d + 2 * G, d)
        _mha_graph(f"{tmp}/plain.onnx", args.dim, args.heads, n, d, d)
        sessions = {name: ort.InferenceSession(f"{tmp}/{name}.onnx", so, providers=["CPUExecutionProvider"])
                    for name in ("scan", "rel", "plain")}
    runs = {"scan": lambda: sessions["scan"].run(None, {"images": x.numpy()}),
            "mha-relative": lambda: sessions["rel"].run(None, {"x": x_tok, **feeds_rel}),
            "mha-plain": lambda: sessions["plain"].run(None, {"x": x_tok, **feeds_plain})}
    out = sessions["rel"].run(None, {"x": x_tok, **feeds_rel})[0]  # (1, N, heads * d) token-major
    out = torch.from_numpy(out).reshape(1, G, G, args.dim).permute(0, 3, 1, 2)
    diff_rel = float((out - ref).abs().max())
    diff_scan = float(np.abs(runs["scan"]()[0] - ref.numpy()).max())

    times = {k: [] for k in runs}
    for r in range(args.rounds + 1):  # round 0: warm-up
        for k, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            if r:
                times[k].append(time.perf_counter() - t0)
    ratio = {k: statistics.median(a / b for a, b in zip(times[k], times["scan"])) for k in runs}
    med = {k: 1000 * statistics.median(v) for k, v in times.items()}

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    command = "benchmarks/onnx_attention_layer.py " + " ".join(argv if argv is not None else sys.argv[1:])
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, ONNX Runtime {ort.__version__}, {args.threads} threads"
    doc = dict(date=stamp, command=command, machine=machine, grid=G, dim=args.dim, heads=args.heads,
               rounds=args.rounds, median_ms=med, ratio_to_scan=ratio, max_abs_diff={"scan": diff_scan, "mha-relative": diff_rel},
               load_average=os.getloadavg())
    lines = [f"# One attention layer in ONNX Runtime: Scan export vs fused MultiHeadAttention", "",
             f"- date (UTC): {stamp}", f"- command: `{command}`", f"- machine: {_cpu_name()}; {machine}",
             f"- layer: RelPosMHSA dim {args.dim}, {args.heads} heads, {G}x{G} tokens, batch 1; {args.rounds} interleaved rounds "
             f"after one warm-up; load average at the end {tuple(round(v, 2) for v in os.getloadavg())}",
             f"- output vs the PyTorch layer, max abs difference: scan {diff_scan:.2e}, mha-relative {diff_rel:.2e}", "",
             "| variant | median ms | per-round ratio to scan (median) |", "|---|---:|---:|"]
    lines += [f"| {k} | {med[k]:.1f} | {ratio[k]:.3f} |" for k in runs]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, f"{args.name}.json").write_text(json.dumps(doc, indent=2) + "\n")
    Path(args.out, f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


if __name__ == "__main__":
    sys.exit(main())
