"""The GPU benchmark on one CUDA GPU: ``python -m botnet.bench.gpu_plan [OUT_DIR]``
(what ``benchmarks/gpu.sh`` runs).

Every GPU table of docs/performance.md, one ``botnet bench --device cuda --preset gpu`` call each, in order of
importance, inside a wall-clock budget (default 330 s, so the whole run stays under 6 minutes with
start-up): attention at 14x14 x 128, 32x32 x 32, 64x64 x 8, 50x84 x 4, 72x72 x 4 (bf16 and fp32/TF32,
fwd and fwd+bwd, each implementation against timm), BoT50 vs R50 at 224 and 1024 px, BoTNet-S1 T3/T5/T7
vs EfficientNet B3/B5/B7, Mask R-CNN BoT50 vs R50 at 1024 px. A section that would start after the
budget is spent is skipped and listed as such. Writes ``gpu-<section>.{json,md}`` per section and
``gpu-summary.{json,md}`` (all rows, the skipped sections, the machine) to OUT_DIR.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["PLAN", "main"]

_GPU = ["--device", "cuda", "--preset", "gpu", "--warmup", "2", "--repeats", "5"]
# (section, botnet bench arguments)
PLAN: list[tuple[str, list[str]]] = [
    ("attention-bf16", ["--suite", "attention", "--bf16", "--attn-impl", "auto,sdpa,explicit"]),
    ("attention-fp32", ["--suite", "attention", "--tf32", "--attn-modes", "fwdbwd", "--attn-impl", "auto,sdpa,explicit"]),
    ("backbone", ["--suite", "backbone", "--bf16", "--channels-last", "--cudnn-benchmark"]),
    # cudnn.benchmark stays off: the varying RoI-head shapes made a training step ~10x slower
    ("maskrcnn", ["--suite", "maskrcnn", "--bf16"]),
    ("efficientnet", ["--suite", "efficientnet", "--bf16", "--channels-last", "--cudnn-benchmark"]),
    # flex compiles per shape (tens of seconds each): last, on the two sizes its head size matters most
    ("attention-flex", ["--suite", "attention", "--attn-impl", "flex", "--attn-modes", "fwdbwd",
                        "--attn-sizes", "64:8,50x84:4", "--tf32"]),
]


def bench_args(section: str, args: list[str], out: str) -> list[str]:
    return ["bench", *_GPU, *args, "--out", out, "--name", f"gpu-{section}"]


def _run_section(section: str, args: list[str], out: str) -> int:
    cmd = [sys.executable, "-m", "botnet.cli", *bench_args(section, args, out)]
    print(f"== {section}: botnet {' '.join(cmd[3:])}", flush=True)
    return subprocess.run(cmd, env=dict(os.environ, HF_HUB_OFFLINE="1")).returncode


def summarize(out: Path, sections: list[str], skipped: list[str], failed: list[str], wall_s: float) -> Path:
    from botnet.bench.runner import markdown_table

    docs = [(s, json.loads((out / f"gpu-{s}.json").read_text())) for s in sections if (out / f"gpu-{s}.json").is_file()]
    rows = [dict(r, section=s) for s, d in docs for r in d["results"]]
    meta = dict(docs[0][1]["meta"]) if docs else {"machine": {}, "date_utc": "", "warmup": 2, "repeats": 5}
    meta.update(title="GPU benchmark (benchmarks/gpu.sh)", command="benchmarks/gpu.sh",
                skipped_sections=skipped, failed_sections=failed, wall_s=round(wall_s, 1),
                note=(f"skipped (budget spent): {', '.join(skipped)}; " if skipped else "")
                + (f"sections with errors: {', '.join(failed)}" if failed else ""))
    doc = {"meta": meta, "results": rows}
    (out / "gpu-summary.json").write_text(json.dumps(doc, indent=2) + "\n")
    md = out / "gpu-summary.md"
    md.write_text(markdown_table(doc) if docs else "# GPU benchmark: no section finished\n")
    return md


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0] if argv else "benchmarks/results")
    budget = float(os.environ.get("BUDGET_S", "330"))
    import torch

    if not torch.cuda.is_available():
        print(f"error: no CUDA GPU visible to torch {torch.__version__}: the GPU benchmark needs one "
              "(CPU figures: botnet bench --device cpu)", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    t0, skipped, failed = time.time(), [], []
    for section, args in PLAN:
        if time.time() - t0 > budget:
            skipped.append(section)
            print(f"== {section}: skipped, the {budget:.0f} s budget is spent", flush=True)
            continue
        if _run_section(section, args, str(out)) != 0:
            failed.append(section)
    md = summarize(out, [s for s, _ in PLAN], skipped, failed, time.time() - t0)
    print(f"wrote {md} ({time.time() - t0:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
