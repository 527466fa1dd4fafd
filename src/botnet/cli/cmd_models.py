"""``botnet models``: every registered model with its parameters and multiply-adds."""
from __future__ import annotations

import argparse
import json

from botnet.cli.argtypes import nonneg_int, positive_int

# What the paper reports, for the table's last column (see the paper notes, section 4).
PAPER = {
    "resnet50": "25.5 M", "botnet50": "20.8 M",
    "botnet_s1_59": "T3: 33.5 M, 7.3 G, 81.7%", "botnet_s1_110": "T4: 54.7 M, 10.9 G, 82.8%",
    "botnet_s1_128": "T5: 75.1 M, 19.3 G, 83.5% (T7 @384: 45.8 G, 84.7%)",
    "botnet_s1_77": "T6: 53.9 M, 23.3 G, 84.0%",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help="list the registered models with parameters and GMACs",
        description="List every registered model with its parameter count (with a classifier of "
        "--num-classes outputs) and its multiply-adds for one image at its default resolution "
        "(or --img-size). GMACs are counted with torch.utils.flop_counter on the meta device: "
        "'GMACs' is the paper's formulation, 'fused' what our memory-linear attention kernel executes.",
    )
    p.add_argument("pattern", nargs="?", default=None, help="shell-style filter, e.g. 'botnet*'")
    p.add_argument("--img-size", type=positive_int, default=None, help="resolution (default: each model's own)")
    p.add_argument("--num-classes", type=nonneg_int, default=1000, help="classifier outputs counted (default 1000)")
    p.add_argument("--backbone-only", action="store_true", help="count MACs of forward_features only")
    p.add_argument("--no-flops", action="store_true", help="parameters only (faster)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="architecture override passed to create_model, e.g. --set se_in_attn=True (repeatable)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from botnet.models import create_model, list_models
    from botnet.models.profile import count_params, profile_model

    overrides = parse_overrides(args.overrides)
    names = list_models(args.pattern)
    if not names:
        print(f"no model matches {args.pattern!r}")
        return 1
    rows = []
    for name in names:
        if args.no_flops:
            import torch

            with torch.device("meta"):
                m = create_model(name, num_classes=args.num_classes, img_size=args.img_size, **overrides)
            rows.append({"model": name, "img_size": m.pretrained_cfg["img_size"][0], "params": count_params(m)})
            continue
        prof = profile_model(
            name, img_size=args.img_size, num_classes=args.num_classes, backbone_only=args.backbone_only,
            **overrides,
        )
        rows.append({
            "model": name, "img_size": prof.img_size[0], "params": prof.params,
            "gmacs": round(prof.gmacs, 2), "gmacs_fused": round(prof.gmacs_fused, 2),
        })
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    cols = ["model", "img_size", "params", "params (M)"] + ([] if args.no_flops else ["GMACs", "GMACs fused"])
    print("| " + " | ".join(cols + ["paper"]) + " |")
    print("|" + "---|" * (len(cols) + 1))
    for r in rows:
        cells = [r["model"], str(r["img_size"]), f"{r['params']:,}", f"{r['params'] / 1e6:.2f}"]
        if not args.no_flops:
            cells += [f"{r['gmacs']:.2f}", f"{r['gmacs_fused']:.2f}"]
        print("| " + " | ".join(cells + [PAPER.get(r["model"], "")]) + " |")
    return 0


def parse_overrides(items: list[str]) -> dict:
    """``["se_in_attn=True", "layers=(3,4,6,3)"]`` -> a dict of Python literals (strings stay strings)."""
    import ast

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out
