"""Combine the per-suite result files of benchmarks/run_all.sh into summary.{json,md,png}, and redraw
every recorded table (NAME.md) and plot (NAME.png, where there is one) from its NAME.json: nothing is
measured again, so a change of the table or plot layout reaches the committed results.

Usage: python benchmarks/summarize.py [RESULTS_DIR]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from botnet.bench.report import markdown_table, plot

ORDER = ["attention", "backbone", "maskrcnn", "maskrcnn-rerun", "efficientnet", "options", "compile", "data", "export"]


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
    redrawn = redraw(out)
    print(f"wrote {out}/summary.json, summary.md, summary.png ({len(results)} rows); redrew {len(redrawn)} "
          f"tables from their JSON: {', '.join(redrawn)}")
    return 0


def redraw(out: Path) -> list[str]:
    """Rewrite NAME.md (and NAME.png where it exists) from every recorded NAME.json but the summary."""
    names = []
    for path in sorted(out.glob("*.json")):
        doc = json.loads(path.read_text())
        if path.name == "summary.json" or not (isinstance(doc, dict) and {"meta", "results"} <= doc.keys()):
            continue
        path.with_suffix(".md").write_text(markdown_table(doc))
        if path.with_suffix(".png").is_file():
            plot(doc, path.with_suffix(".png"))
        names.append(path.stem)
    return names


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
