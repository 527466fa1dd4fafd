"""The benchmark's Markdown table and plot, from a result document (what ``botnet bench`` records).

Both read only the recorded JSON, so ``benchmarks/summarize.py`` redraws them from the files in
``benchmarks/results/`` without measuring again. Rules shared by the table and the plot:

- A **memory ratio** is shown only when it means something: both peaks measured and the baseline's
  at least the table's resolution (0.05 MiB, what shows as ``0.0``); otherwise ``—``. (A step
  whose extra memory rounds to ``0.0 / 0.0 MiB`` has no ratio worth reading, whatever the bytes say.)
- **Target verdicts** (``met`` / ``MISSED``) are given on candidate rows only. A *reference* row
  measures an attention implementation that is not what ``impl="auto"`` runs for that case (an
  ``auto`` row of the same case is in the document, or ``auto`` would pick another implementation):
  it is there to compare against, and its cell says ``reference``.
"""
from __future__ import annotations

import re
from pathlib import Path

__all__ = ["markdown_table", "plot", "figure", "mem_ratio", "is_reference", "fmt_mib", "target_cell"]

MIB = 2**20
MEM_RESOLUTION_MIB = 0.05  # the table prints MiB with one decimal: below this a value shows as 0.0
DASH = "—"  # a value that is not measured, or a ratio that means nothing


def _peak(r: dict, who: str) -> int | None:
    return ((r.get(who) or {}).get("memory") or {}).get("peak_bytes")


def fmt_mib(r: dict, who: str) -> str:
    b = _peak(r, who)
    return DASH if b is None else f"{b / MIB:.1f}"


def mem_ratio(r: dict) -> float | None:
    """ours / baseline peak memory, or None when either is unmeasured or the baseline shows as 0.0 MiB."""
    ours, base = _peak(r, "ours"), _peak(r, "baseline")
    if ours is None or base is None or base / MIB < MEM_RESOLUTION_MIB:
        return None
    return ours / base


def _auto_pick(cfg: dict) -> str:
    """What ``impl="auto"`` runs for an attention configuration (the layer's own rule)."""
    import torch

    from botnet.layers import choose_impl

    size = cfg.get("size", 14)
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    dtype = torch.bfloat16 if cfg.get("bf16") else torch.float32
    return choose_impl(str(cfg.get("device", "cpu")), dtype, h * w, cfg.get("mode") == "fwdbwd")


def _case(name: str) -> str:
    return re.sub(r" \[[^\]]+\]$", "", name)  # "attn 32x32 b8 fwd [sdpa]" -> "attn 32x32 b8 fwd"


def is_reference(r: dict, rows: list[dict]) -> bool:
    """True for a row that measures a named attention implementation other than what auto runs."""
    impl = (r.get("ours") or {}).get("impl")
    if (r.get("ours") or {}).get("model") != "attn:botnet" or impl in (None, "auto"):
        return False
    auto_row = any((o.get("ours") or {}).get("impl") == "auto" and o.get("group") == r.get("group")
                   and _case(o.get("name", "")) == _case(r.get("name", "")) for o in rows)
    return auto_row or impl != _auto_pick(r["ours"])


def target_cell(r: dict, key: str, reference: bool) -> str:
    """``<= 0.7 met`` / ``<= 0.7 MISSED`` / ``<= 0.2 not measured`` on candidate rows; ``reference`` else."""
    t = (r.get("targets") or {}).get(key)
    if t is None:
        return ""
    if reference:
        return "reference"
    ratio = r.get("time_ratio") if key == "time" else mem_ratio(r)
    if ratio is None:
        return f"<= {t} not measured"
    return f"<= {t} {'met' if ratio <= t else 'MISSED'}"


def _header(meta: dict, with_memory: bool = True) -> list[str]:
    """The run's facts; the memory lines only for a run that measured memory (the time-only suites did not)."""
    cuda = meta.get("device") == "cuda"
    gpu = f"GPU {meta['machine'].get('gpu')} (CUDA {meta['machine'].get('cuda')})" if cuda else "no GPU used"
    memory = ("- peak memory: torch.cuda.max_memory_allocated during one step minus the memory allocated "
              "before it (after a warm-up step)" if cuda else
              "- peak memory: one fresh process per configuration; extra resident memory at the step's peak "
              "(VmHWM after clear_refs minus VmRSS before the step)")
    lines = [
        f"# Benchmark results: {meta.get('title', 'botnet bench')}",
        "",
        f"- date (UTC): {meta['date_utc']}",
        f"- command: `{meta['command']}`",
        f"- machine: {meta['machine']['cpu']}, {meta['machine']['logical_cpus']} logical CPUs, "
        f"torch {meta['machine']['torch']} ({meta['machine']['torch_threads']} threads), "
        f"torchvision {meta['machine']['torchvision']}, timm {meta['machine']['timm']}, {gpu}",
        f"- timing: {meta['warmup']} warm-up + {meta['repeats']} timed runs per variant, interleaved; "
        "median; time ratio = median(ours) / median(baseline) (targets are judged on it); "
        "'ratio of minima' = min(ours) / min(baseline), less sensitive to other jobs' bursts",
        *([memory, f"- mem ratio: {DASH} where a peak is not measured or the baseline's shows as 0.0 MiB; targets "
           "are judged on candidate rows only ('reference': an attention implementation other than what auto runs)"]
          if with_memory else []),
        f"- load average before / after: {meta.get('load_before')} / {meta.get('load_after')}; "
        f"other busy processes at start: {meta.get('other_busy_processes')}",
    ]
    if meta.get("note"):
        lines.append(f"- note: {meta['note']}")
    return lines


def _fmt_ms(r: dict, who: str) -> str:
    s = (r.get(who) or {}).get("median_s")
    return DASH if s is None else f"{s * 1e3:.1f}"


def _row(r: dict, rows: list[dict]) -> str:
    if "error" in r:
        return (f"| {r['group']} | {r['name']} | {r['ours_label']} | {r['baseline_label']} | "
                f"error: {r['error']} ||||||||| ")
    ref = is_reference(r, rows)
    mr = mem_ratio(r)
    mins = f"{min(r['ours']['times_s']) / min(r['baseline']['times_s']):.3f}"
    return (f"| {r['group']} | {r['name']} | {r['ours_label']} | {r['baseline_label']} | {_fmt_ms(r, 'ours')} | "
            f"{_fmt_ms(r, 'baseline')} | {r['time_ratio']:.3f} | {target_cell(r, 'time', ref)} | {mins} | "
            f"{fmt_mib(r, 'ours')} | {fmt_mib(r, 'baseline')} | {DASH if mr is None else f'{mr:.3f}'} | "
            f"{target_cell(r, 'mem', ref)} |")


def markdown_table(doc: dict) -> str:
    rows = doc["results"]
    with_memory = any(_peak(r, who) is not None for r in doc["results"] for who in ("ours", "baseline"))
    lines = _header(doc["meta"], with_memory) + [
        "",
        "| group | case | ours | baseline | ours ms | base ms | time ratio | target | ratio of minima | ours peak MiB | base peak MiB | mem ratio | target |",
        "|---|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    lines += [_row(r, rows) for r in rows]
    lines += _images_per_s_table(rows)
    extra = doc["meta"].get("attention_equivalence")
    if extra:
        lines += ["", "Attention equivalence check (ours vs timm BottleneckAttn, copied weights, float64): "
                  f"max |diff| = {extra['max_abs_diff']:.3g} (output max {extra['max_abs_output']:.3g}; "
                  f"without the position term the difference would be {extra['max_abs_diff_without_position_term']:.3g})."]
    return "\n".join(lines) + "\n"


def _images_per_s_table(results: list[dict]) -> list[str]:
    """The data suite's throughput: images per second per CPU core, ours and the baseline."""
    rows = [r for r in results if "images_per_s" in r.get("ours", {})]
    if not rows:
        return []
    out = ["", "Images per second per CPU core (median pass; one process, one torch thread):", "",
           "| case | ours | ours img/s | baseline | baseline img/s |", "|---|---|---:|---|---:|"]
    for r in rows:
        out.append(f"| {r['name']} | {r['ours_label']} | {r['ours']['images_per_s']:.1f} | {r['baseline_label']} | "
                   f"{r['baseline']['images_per_s']:.1f} |")
    return out


# ---------------------------------------------------------------------- the plot
_TICKS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1, 1.5, 2, 3, 5, 7, 10, 20, 50, 100)


def _ratio_axis(ax, values: list[float]) -> float:
    """Log x axis labelled with plain numbers (0.5, 1, 2), never 3x10^-1, with room on the right for
    the value labels; returns its left end (where a ratio of 0 is drawn)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    positive = [v for v in values if v > 0]
    lo, hi = min(positive) / 1.4, max(positive) * 1.9
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ticks = [t for t in _TICKS if lo <= t <= hi] or [1]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    return lo


def figure(doc: dict):
    """The bar chart of the ratios (a matplotlib Figure), or None when no row has a result."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    rows = [r for r in doc["results"] if "error" not in r]
    if not rows:
        return None
    refs = [is_reference(r, doc["results"]) for r in rows]
    mems = [mem_ratio(r) for r in rows]
    times = [r["time_ratio"] for r in rows]
    fig, ax = plt.subplots(figsize=(11, 0.5 * len(rows) + 2.0))
    h = 0.38
    have = [i for i, m in enumerate(mems) if m is not None]
    targets = [(r["targets"][k], i + off) for i, (r, ref) in enumerate(zip(rows, refs)) if not ref
               for k, off in (("time", -h / 2), ("mem", h / 2)) if (r.get("targets") or {}).get(k) is not None]
    lo = _ratio_axis(ax, times + [mems[i] for i in have] + [t for t, _ in targets] + [1.0])
    tb = ax.barh([i - h / 2 for i in range(len(rows))], [max(v, lo) for v in times], height=h, color="C0")
    mb = ax.barh([i + h / 2 for i in have], [max(mems[i], lo) for i in have], height=h, color="C1")
    ax.bar_label(tb, labels=[f"{v:.2f}" for v in times], padding=2, fontsize=7)
    ax.bar_label(mb, labels=[f"{mems[i]:.2f}" for i in have], padding=2, fontsize=7)
    for t, yy in targets:
        ax.plot([t], [yy], marker="|", color="red", markersize=12, mew=2)
    for i in (i for i, m in enumerate(mems) if m is None):  # say so rather than leave a gap
        ax.text(lo, i + h / 2, f"  memory {DASH}", va="center", fontsize=7, color="gray")
    ax.axvline(1.0, color="gray", lw=0.8, ls="--")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{r['group']}: {r['name']}" + (" (reference)" if ref else "") for r, ref in zip(rows, refs)],
                       fontsize=8)
    ax.set_ylim(len(rows) - 0.5, -0.5)  # first row on top
    ax.set_xlabel("ours / baseline (log scale; < 1 is better)")
    handles = [Patch(color="C0", label="time ratio")]
    handles += [Patch(color="C1", label="peak-memory ratio")] if have else []
    handles += [Line2D([], [], marker="|", color="red", ls="", markersize=10, mew=2, label="target (<=)")
                ] if targets else []
    handles += [Line2D([], [], color="gray", lw=0.8, ls="--", label="equal (1)")]
    # above the axes, never over a bar
    ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=len(handles), fontsize=8,
              frameon=False)
    ax.set_title(f"{doc['meta'].get('title', 'botnet bench')} ({doc['meta']['date_utc'][:10]})", fontsize=10,
                 pad=24)
    fig.tight_layout()
    return fig


def plot(doc: dict, path: str | Path) -> bool:
    try:
        fig = figure(doc)
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        return False
    if fig is None:
        return False
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
