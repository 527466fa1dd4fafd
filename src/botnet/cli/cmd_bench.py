"""``botnet bench``: latency / peak memory of our models against baselines, as ratios."""
from __future__ import annotations

import argparse
import shlex
import sys

SUITE_NAMES = ("attention", "backbone", "maskrcnn", "efficientnet", "options", "compile")


def _sizes(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        size, _, batch = part.strip().partition(":")
        out.append((int(size), int(batch or 1)))
    return out


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
            "autocast), compile (torch.compile vs eager)."
        ),
    )
    p.add_argument("--suite", action="append", choices=SUITE_NAMES + ("all",),
                   help="what to run (repeatable; default: attention)")
    p.add_argument("--attn-sizes", type=_sizes, default=None, metavar="S:B,...",
                   help="attention map sizes and batches (default 14:8,32:8,64:2)")
    p.add_argument("--attn-dim", type=int, default=512)
    p.add_argument("--attn-heads", type=int, default=4)
    p.add_argument("--attn-modes", default="fwd,fwdbwd", help="comma list of fwd, fwdbwd")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds per variant (default 1)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per variant (default 5)")
    p.add_argument("--no-memory", action="store_true", help="skip the per-process peak-memory runs")
    p.add_argument("--channels-last", action="store_true", help="run every model and input channels_last")
    p.add_argument("--bf16", action="store_true", help="run everything under CPU bf16 autocast")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--out", default="benchmarks/results", help="output folder (default benchmarks/results)")
    p.add_argument("--name", default="bench", help="file stem of the outputs (default 'bench')")
    p.add_argument("--note", default="", help="free text stored with the results (e.g. machine load)")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    import torch

    from botnet.bench.cases import attention_equivalence, make_suite
    from botnet.bench.runner import new_doc, run_comparisons, write_results

    if args.threads:
        torch.set_num_threads(args.threads)
    suites = args.suite or ["attention"]
    if "all" in suites:
        suites = list(SUITE_NAMES)
    flags = dict(channels_last=args.channels_last, bf16=args.bf16)
    comps = []
    for s in suites:
        if s == "attention":
            kw = dict(dim=args.attn_dim, heads=args.attn_heads,
                      modes=tuple(m.strip() for m in args.attn_modes.split(",") if m.strip()))
            if args.attn_sizes:
                kw["sizes"] = tuple(args.attn_sizes)
            comps += make_suite(s, **kw, **flags)
        elif s in ("options", "compile"):
            comps += make_suite(s)
        else:
            comps += make_suite(s, **flags)
    if sys.argv[1:2] == ["bench"] or (len(sys.argv) > 2 and sys.argv[1:3] == ["-m", "botnet.cli"]):
        command = "botnet bench " + " ".join(shlex.quote(a) for a in sys.argv[sys.argv.index("bench") + 1:])
    else:  # called as botnet.cli.main([...]) from Python: record the parsed options
        opts = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
        command = f"botnet.cli.main(['bench', ...]) with options {opts}"
    doc = new_doc(title=args.name, command=command, warmup=args.warmup, repeats=args.repeats, note=args.note)
    doc["meta"]["suites"] = suites
    doc["meta"]["flags"] = flags
    if "attention" in suites:
        doc["meta"]["attention_equivalence"] = attention_equivalence(
            size=min(14, max(s for s, _ in (args.attn_sizes or [(14, 8)]))),
            dim=args.attn_dim, heads=args.attn_heads,
        )
        eq = doc["meta"]["attention_equivalence"]
        print(f"attention vs timm (copied weights, float64): max |diff| {eq['max_abs_diff']:.3g}")
    doc["results"] = run_comparisons(comps, warmup=args.warmup, repeats=args.repeats, memory=not args.no_memory)
    from botnet.bench.runner import _load

    doc["meta"]["load_after"] = _load()
    paths = write_results(doc, args.out, args.name)
    print("wrote " + ", ".join(paths.values()))
    return 1 if any("error" in r for r in doc["results"]) else 0
