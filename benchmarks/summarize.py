"""Combine the per-suite result files of benchmarks/run_all.sh into summary.{json,md,png}.

Usage: python benchmarks/summarize.py [RESULTS_DIR]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from botnet.bench.runner import markdown_table, plot

ORDER = ["attention", "backbone", "maskrcnn", "maskrcnn-rerun", "efficientnet", "options", "compile", "export"]


def main(argv: list[str]) -> int:
    out = Path(argv[0] if argv else "benchmarks/results")
    docs = [(n, json.loads((out / f"{n}.json").read_text())) for n in ORDER if (out / f"{n}.json").is_file()]
    if not docs:
        print(f"no result files in {out}", file=sys.stderr)
        return 1
    first = docs[0][1]["meta"]
    meta = dict(first)
    meta["title"] = "summary of " + ", ".join(n for n, _ in docs)
    meta["command"] = "benchmarks/run_all.sh (one botnet bench call per suite; each suite file records its own command)"
    meta["date_utc"] = f"{first['date_utc']} .. {docs[-1][1]['meta']['date_utc']}"
    meta["warmup"] = "/".join(str(d["meta"]["warmup"]) for _, d in docs)
    meta["repeats"] = "/".join(str(d["meta"]["repeats"]) for _, d in docs)
    meta["load_before"] = first.get("load_before")
    meta["load_after"] = docs[-1][1]["meta"].get("load_after")
    meta["suites"] = {n: {k: d["meta"].get(k) for k in ("date_utc", "command", "load_before", "load_after",
                                                        "other_busy_processes", "warmup", "repeats")}
                      for n, d in docs}
    results = [r for _, d in docs for r in d["results"]]
    doc = {"meta": meta, "results": results}
    (out / "summary.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / "summary.md").write_text(markdown_table(doc))
    plot(doc, out / "summary.png")
    for n, d in docs:  # refresh the per-suite tables with the current table layout
        (out / f"{n}.md").write_text(markdown_table(d))
    print(f"wrote {out}/summary.json, summary.md, summary.png ({len(results)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
