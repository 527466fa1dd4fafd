"""``botnet bench``: latency / peak memory of our models against baselines, as ratios."""
from __future__ import annotations

import argparse
import os
import shlex
import sys

from botnet.cli.argtypes import nonneg_int, positive_int

SUITE_NAMES = ("attention", "backbone", "maskrcnn", "efficientnet", "options", "compile", "data", "export")
IMPL_NAMES = ("auto", "sdpa", "flex", "explicit")
MODE_NAMES = ("fwd", "fwdbwd")


def _sizes(text: str) -> list:
    """``S[:B]`` or ``HxW[:B]``, comma-separated -> [(S or (H, W), B)], every number >= 1."""
    out = []
    for part in text.split(","):
        size, _, batch = part.strip().partition(":")
        try:
            dims = [int(v) for v in size.lower().split("x")]
            b = int(batch or 1)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part.strip()!r} is not SIZE[:BATCH] or HxW[:BATCH] (e.g. 64:2, 50x84:4)") from None
        if len(dims) not in (1, 2) or min(dims + [b]) < 1:
            raise argparse.ArgumentTypeError(f"{part.strip()!r}: sizes and batch must be integers >= 1 (e.g. 64:2, 50x84:4)")
        out.append((dims[0] if len(dims) == 1 else (dims[0], dims[1]), b))
    return out


def _choices(allowed: tuple[str, ...]):
    def parse(text: str) -> tuple[str, ...]:
        items = tuple(t.strip() for t in text.split(",") if t.strip())
        bad = [t for t in items if t not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"{','.join(bad) or repr(text)} not allowed: give a comma list of {', '.join(allowed)}")
        return items

    return parse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench",
        help="benchmark ours vs baselines (time and peak memory ratios)",
        description=(
            "Measure latency and peak memory of our layers/models against a baseline in the same run. "
            "Timing is interleaved (ours, baseline, ours, ...) after warm-up, median over repeats; "
            "peak memory is measured in a fresh process per configuration. Writes NAME.json, NAME.md "
            "and NAME.png to --out. Suites: attention (RelPosMHSA vs timm BottleneckAttn), backbone "
            "(botnet50 vs torchvision resnet50), maskrcnn (BoT50-FPN vs torchvision R50-FPN Mask R-CNN), "
            "efficientnet (botnet_s1_59 vs timm EfficientNet-B3/B4), options (channels_last, bf16 "
            "autocast), compile (torch.compile vs eager), data (training-loader images/s per CPU core: tar shards "
            "vs image folder, ImageNet augmentation at 224 px, on generated 500x375 JPEGs), export (botnet50 vs resnet50 exported to ONNX, "
            "in ONNX Runtime on the CPU)."
        ),
    )
    p.add_argument("--suite", action="append", choices=SUITE_NAMES + ("all",),
                   help="what to run (repeatable; default: attention)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu",
                   help="where to run (cuda: synchronised timing, peak memory from torch.cuda.max_memory_allocated)")
    p.add_argument("--preset", choices=("cpu", "gpu"), default=None,
                   help="case lists and batches of each suite (default: the --device's; gpu = the GPU tables of docs/performance.md)")
    p.add_argument("--attn-sizes", type=_sizes, default=None, metavar="S:B,...",
                   help="attention map sizes (S or HxW) and batches (default 14:8,32:8,64:2; gpu preset "
                   "14:128,32:32,64:8,50x84:4,72:4)")
    p.add_argument("--attn-dim", type=positive_int, default=512)
    p.add_argument("--attn-heads", type=positive_int, default=4)
    p.add_argument("--attn-modes", type=_choices(MODE_NAMES), default=MODE_NAMES, help="comma list of fwd, fwdbwd")
    p.add_argument("--attn-impl", type=_choices(IMPL_NAMES), default=("auto",),
                   help="comma list of RelPosMHSA implementations, each against timm (default auto)")
    p.add_argument("--data-images", type=positive_int, default=256,
                   help="data suite: how many 500x375 JPEGs to generate and load per pass (default 256)")
    p.add_argument("--onnx-attention", choices=("scan", "sdpa"), default="scan",
                   help="export suite: how botnet50's attention is exported (botnet export --onnx-attention)")
    p.add_argument("--onnx-opset", type=positive_int, default=None,
                   help="export suite: ONNX opset of both exports, 18 to 23 (botnet export --opset)")
    p.add_argument("--warmup", type=nonneg_int, default=1, help="untimed rounds per variant (default 1)")
    p.add_argument("--repeats", type=positive_int, default=5, help="timed runs per variant (default 5)")
    p.add_argument("--no-memory", action="store_true", help="skip the per-process peak-memory runs")
    p.add_argument("--channels-last", action="store_true", help="run every model and input channels_last")
    p.add_argument("--bf16", action="store_true", help="run everything under bf16 autocast")
    p.add_argument("--tf32", action="store_true", help="CUDA fp32: allow TF32 matmuls and convolutions (both sides)")
    p.add_argument("--cudnn-benchmark", action="store_true",
                   help="CUDA: cudnn.benchmark on (fixed shapes; slows Mask R-CNN's varying RoI shapes)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--out", default="benchmarks/results", help="output folder (default benchmarks/results)")
    p.add_argument("--name", default="bench", help="file stem of the outputs (default 'bench')")
    p.add_argument("--note", default="", help="free text stored with the results (e.g. machine load)")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    import torch

    from botnet.bench.runner import new_doc, run_comparisons, write_results
    from botnet.errors import resolve_device

    device = resolve_device(args.device).type  # no GPU: one-line error, exit 2, before any work
    if args.onnx_opset is not None and not 18 <= args.onnx_opset <= 23:
        from botnet.errors import ConfigError

        raise ConfigError(f"--onnx-opset {args.onnx_opset}: the exporter writes opsets 18 to 23; choose one of them")
    if args.threads:
        torch.set_num_threads(args.threads)
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.tf32
        torch.backends.cudnn.benchmark = args.cudnn_benchmark
    comps, suites = _comparisons(args, device)
    if sys.argv[1:2] == ["bench"] or (len(sys.argv) > 2 and sys.argv[1:3] == ["-m", "botnet.cli"]):
        command = "botnet bench " + " ".join(shlex.quote(a) for a in sys.argv[sys.argv.index("bench") + 1:])
    else:  # called as botnet.cli.main([...]) from Python: record the parsed options
        opts = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
        command = f"botnet.cli.main(['bench', ...]) with options {opts}"
    doc = new_doc(title=args.name, command=command, warmup=args.warmup, repeats=args.repeats, note=args.note,
                  device=device)
    doc["meta"]["suites"] = suites
    doc["meta"]["flags"] = dict(channels_last=args.channels_last, bf16=args.bf16, tf32=args.tf32,
                                cudnn_benchmark=args.cudnn_benchmark, preset=args.preset or ("gpu" if device == "cuda" else "cpu"))
    doc["results"] = run_comparisons(comps, warmup=args.warmup, repeats=args.repeats, memory=not args.no_memory)
    for r in doc["results"]:  # the export suite's files lived in a temporary folder: keep their names only
        for who in ("ours", "baseline"):
            if "onnx_path" in r.get(who, {}):
                r[who]["onnx_path"] = os.path.basename(r[who]["onnx_path"])
    from botnet.bench.runner import _load

    doc["meta"]["load_after"] = _load()
    paths = write_results(doc, args.out, args.name)
    print("wrote " + ", ".join(paths.values()))
    return 1 if any("error" in r for r in doc["results"]) else 0


def _comparisons(args: argparse.Namespace, device: str) -> tuple[list, list[str]]:
    from botnet.bench.cases import make_suite

    suites = args.suite or ["attention"]
    if "all" in suites:
        suites = list(SUITE_NAMES)
    preset = args.preset or ("gpu" if device == "cuda" else "cpu")
    flags = dict(channels_last=args.channels_last, bf16=args.bf16, device=device)
    comps = []
    for s in suites:
        if s == "attention":
            kw = dict(dim=args.attn_dim, heads=args.attn_heads, modes=args.attn_modes, impls=args.attn_impl)
            if args.attn_sizes:
                kw["sizes"] = tuple(args.attn_sizes)
            comps += make_suite(s, preset=preset, **kw, **flags)
        elif s in ("options", "compile"):
            comps += make_suite(s)
        elif s == "data":
            comps += make_suite(s, images=args.data_images)
        elif s == "export":
            comps += make_suite(s, preset=preset, attention=args.onnx_attention, opset=args.onnx_opset)
        else:
            comps += make_suite(s, preset=preset, **flags)
    return comps, suites
