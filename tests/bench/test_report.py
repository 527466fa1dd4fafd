"""The benchmark table and plot, on small synthetic results: memory ratios only where they mean
something, target verdicts only on candidate rows, plain tick labels, values on the bars, a legend
clear of every bar; and benchmarks/summarize.py redraws recorded results from their JSON."""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

from botnet.bench.report import figure, markdown_table

MIB = 2**20
META = {"title": "synthetic", "date_utc": "2026-12-01T00:00:00Z", "command": "botnet bench", "warmup": 1,
        "repeats": 3, "machine": {"cpu": "cpu", "logical_cpus": 2, "torch": "2", "torch_threads": 2,
                                  "torchvision": "0", "timm": "1"}}


def _row(name, time_ratio, ours_b=None, base_b=None, *, impl=None, targets=None, model="attn:botnet",
         mode="fwd", size=32):
    def side(ms, b, **cfg):
        d = {"mode": mode, "size": [size, size], "device": "cpu", "times_s": [ms / 1e3] * 3, "median_s": ms / 1e3,
             **cfg}
        if b != "unmeasured":
            d["memory"] = {"peak_bytes": b}
        return d

    ours = side(100.0 * time_ratio, ours_b, model=model, **({"impl": impl} if impl else {}))
    return {"group": "attention", "name": name + (f" [{impl}]" if impl else ""), "ours": ours,
            "baseline": side(100.0, base_b, model="attn:timm"), "ours_label": "ours", "baseline_label": "base",
            "targets": targets or {}, "time_ratio": time_ratio,
            "mem_ratio": ours_b / base_b if isinstance(base_b, int) and base_b and isinstance(ours_b, int) else None}


def _cells(md: str) -> dict[str, list[str]]:
    """case name -> the cells after it: ours ms .. mem target."""
    out = {}
    for line in md.splitlines():
        if line.startswith("| attention |"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            out[cells[1]] = cells[4:]
    return out


def test_memory_ratio_only_where_it_means_something():
    doc = {"meta": META, "results": [
        _row("normal", 0.5, 100 * MIB, 200 * MIB),
        _row("both zero", 0.5, 0, 0),
        _row("zero baseline", 0.5, 5 * MIB, 0),
        _row("both round to 0.0", 0.5, 20_000, 27_060),  # 0.739 of nothing
        _row("ours zero", 0.5, 0, 3 * MIB),
        _row("unmeasured", 0.5, "unmeasured", "unmeasured"),
        _row("worker failed", 0.5, None, 3 * MIB),
    ]}
    c = _cells(markdown_table(doc))
    # ours MiB, base MiB, mem ratio
    assert c["normal"][5:8] == ["100.0", "200.0", "0.500"]
    assert c["both zero"][5:8] == ["0.0", "0.0", "—"]
    assert c["zero baseline"][5:8] == ["5.0", "0.0", "—"]
    assert c["both round to 0.0"][5:8] == ["0.0", "0.0", "—"]
    assert c["ours zero"][5:8] == ["0.0", "3.0", "0.000"]  # a real measurement: none at all against 3 MiB
    assert c["unmeasured"][5:8] == ["—", "—", "—"]
    assert c["worker failed"][5:8] == ["—", "3.0", "—"]


def test_the_header_explains_peak_memory_only_when_a_peak_was_measured():
    timed = markdown_table({"meta": META, "results": [_row("t", 0.5, "unmeasured", "unmeasured")]})
    both = markdown_table({"meta": META, "results": [_row("t", 0.5, "unmeasured", "unmeasured"),
                                                     _row("m", 0.5, MIB, 2 * MIB)]})
    assert "peak memory:" not in timed and "mem ratio:" not in timed
    assert "peak memory:" in both and "mem ratio:" in both


def test_verdicts_on_candidate_rows_only():
    t = {"time": 0.7, "mem": 0.2}
    doc = {"meta": META, "results": [
        _row("with auto", 0.8, 10 * MIB, 100 * MIB, impl="auto", targets=t),
        _row("with auto", 0.6, 50 * MIB, 100 * MIB, impl="explicit", targets=t),  # auto's row is there
        _row("cpu pick", 0.9, 10 * MIB, 100 * MIB, impl="sdpa", targets=t),  # auto runs sdpa on the CPU
        _row("cpu other", 0.9, 50 * MIB, 100 * MIB, impl="explicit", targets=t),  # auto would not run it
        _row("default", 0.5, "unmeasured", "unmeasured", targets=t),  # no impl named: what the package runs
    ]}
    md = markdown_table(doc)
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in md.splitlines() if ln.startswith("| attention |")]
    verdicts = [(r[1], r[7], r[12]) for r in rows]  # case, time target, mem target
    assert verdicts == [
        ("with auto [auto]", "<= 0.7 MISSED", "<= 0.2 met"),
        ("with auto [explicit]", "reference", "reference"),
        ("cpu pick [sdpa]", "<= 0.7 MISSED", "<= 0.2 met"),
        ("cpu other [explicit]", "reference", "reference"),
        ("default", "<= 0.7 met", "<= 0.2 not measured"),
    ]
    assert md.count("MISSED") == 2


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_plot_plain_ticks_values_on_bars_legend_clear():
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    t = {"time": 0.7}
    doc = {"meta": META, "results": [
        _row("a", 0.31, 10 * MIB, 100 * MIB, impl="auto", targets=t),
        _row("a", 0.45, 90 * MIB, 100 * MIB, impl="explicit", targets=t),
        _row("b", 1.7, "unmeasured", "unmeasured"),
        _row("c", 0.95, 20_000, 27_060),
    ]}
    fig = figure(doc)
    try:
        fig.canvas.draw()
        ax = fig.axes[0]
        ticks = [lab.get_text() for lab in ax.get_xticklabels() + ax.get_xticklabels(minor=True) if lab.get_text()]
        assert ticks and all(re.fullmatch(r"\d+(\.\d+)?", x) for x in ticks), ticks
        assert "1" in ticks and "0.5" in ticks
        texts = [x.get_text() for x in ax.texts]
        assert [x for x in texts if re.fullmatch(r"\d\.\d\d", x)] == ["0.31", "0.45", "1.70", "0.95", "0.10", "0.90"]
        assert texts.count("  memory —") == 2  # b unmeasured, c below the resolution: said, not drawn
        bars = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_width() > 0]
        assert len(bars) == 6
        legend = ax.get_legend().get_window_extent()
        assert not any(_overlap(legend, b.get_window_extent()) for b in bars)
        markers = [ln for ln in ax.lines if ln.get_marker() == "|"]
        assert len(markers) == 1  # the auto row's target; the explicit row is a reference
        assert [lab.get_text() for lab in ax.get_yticklabels()][1].endswith("(reference)")
    finally:
        plt.close(fig)


def test_summarize_redraws_recorded_results(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "summarize", Path(__file__).resolve().parents[2] / "benchmarks" / "summarize.py")
    summarize = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summarize)
    doc = {"meta": META, "results": [_row("x", 0.5, 20_000, 27_060, targets={"mem": 0.5})]}
    (tmp_path / "attention.json").write_text(json.dumps(doc))
    (tmp_path / "attention.md").write_text("old table\n")
    (tmp_path / "attention.png").write_bytes(b"old")
    (tmp_path / "cpu-extra.json").write_text(json.dumps(doc))  # no plot recorded: none is added
    assert summarize.main([str(tmp_path)]) == 0
    for name in ("attention", "cpu-extra", "summary"):
        assert (tmp_path / f"{name}.md").read_text() == markdown_table(
            json.loads((tmp_path / f"{name}.json").read_text()))
    assert _cells((tmp_path / "attention.md").read_text())["x"][5:] == ["0.0", "0.0", "—", "<= 0.5 not measured"]
    assert (tmp_path / "attention.png").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "cpu-extra.png").exists()
    assert json.loads((tmp_path / "attention.json").read_text()) == doc  # the record is not touched
