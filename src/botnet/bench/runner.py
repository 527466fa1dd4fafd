"""Run comparisons and write the results: JSON, a Markdown table and a matplotlib plot."""
from __future__ import annotations

import datetime as _dt
import gc
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from botnet.bench.cases import Comparison, build_step
from botnet.bench.core import measure_cuda_peak_memory, measure_peak_memory, median, time_interleaved

__all__ = ["run_comparison", "run_comparisons", "machine_info", "write_results"]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _other_python_jobs() -> int | None:
    """How many other processes use a noticeable share of the CPU right now (ps), or None."""
    try:
        out = subprocess.run(["ps", "-eo", "pid,pcpu,comm"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    me = os.getpid()
    n = 0
    for line in out.splitlines()[1:]:
        parts = line.split(None, 2)
        if len(parts) == 3 and parts[0].isdigit() and int(parts[0]) != me:
            try:
                if float(parts[1]) >= 20.0:
                    n += 1
            except ValueError:
                pass
    return n


def machine_info() -> dict:
    import torchvision

    try:
        import timm

        timm_v = timm.__version__
    except ImportError:  # pragma: no cover
        timm_v = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                timeout=10, cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm_v,
        "git_commit": commit,
        "gpu_used": False,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cuda": torch.version.cuda,
    }


def _peak_memory(cfg: dict) -> dict:
    if torch.device(cfg.get("device", "cpu")).type != "cuda":
        return measure_peak_memory(cfg)  # a fresh process: the CPU allocator keeps no peak
    try:
        return measure_cuda_peak_memory(cfg)
    except Exception as e:  # e.g. out of memory: keep the timing, report why the memory is missing
        return {"peak_bytes": None, "error": f"{type(e).__name__}: {e}"}


def run_comparison(comp: Comparison, *, warmup: int, repeats: int, memory: bool, log=print) -> dict:
    t0 = time.time()
    load_before = _load()
    res: dict = comp.to_dict()
    try:
        steps = {"ours": build_step(comp.ours), "baseline": build_step(comp.baseline)}
        times = time_interleaved(steps, warmup=warmup, repeats=repeats)
        del steps
        gc.collect()
        res["ours"]["times_s"] = times["ours"]
        res["baseline"]["times_s"] = times["baseline"]
        mo, mb = median(times["ours"]), median(times["baseline"])
        res["ours"]["median_s"], res["baseline"]["median_s"] = mo, mb
        res["time_ratio"] = mo / mb
        res["time_ratio_per_round_median"] = median([a / b for a, b in zip(times["ours"], times["baseline"])])
        res["time_ratio_of_minima"] = min(times["ours"]) / min(times["baseline"])
        for who in ("ours", "baseline"):  # loaders: images per second on the one core they run on
            if "images" in res[who]:
                res[who]["images_per_s"] = res[who]["images"] / res[who]["median_s"]
    except Exception as e:  # report and go on: one failing case must not lose the others
        res["error"] = f"{type(e).__name__}: {e}"
        log(f"  ! {comp.name}: {res['error']}")
        return res
    if memory and comp.memory:
        mo, mb = _peak_memory(comp.ours), _peak_memory(comp.baseline)
        res["ours"]["memory"], res["baseline"]["memory"] = mo, mb
        if mo.get("peak_bytes") is not None and mb.get("peak_bytes"):
            res["mem_ratio"] = mo["peak_bytes"] / mb["peak_bytes"]
    met = {}
    for key, limit in comp.targets.items():
        ratio = res.get(f"{key}_ratio")
        met[key] = None if ratio is None else bool(ratio <= limit)
    res["target_met"] = met
    res["load_before"], res["load_after"] = load_before, _load()
    res["wall_s"] = round(time.time() - t0, 1)
    return res


def run_comparisons(comps: list[Comparison], *, warmup: int, repeats: int, memory: bool, log=print) -> list[dict]:
    out = []
    for i, c in enumerate(comps, 1):
        log(f"[{i}/{len(comps)}] {c.group}: {c.name}")
        r = run_comparison(c, warmup=warmup, repeats=repeats, memory=memory, log=log)
        if "error" not in r:
            msg = f"  time {r['ours']['median_s'] * 1e3:.1f} / {r['baseline']['median_s'] * 1e3:.1f} ms = {r['time_ratio']:.3f}"
            if "mem_ratio" in r:
                msg += (f"; peak mem {r['ours']['memory']['peak_bytes'] / 2**20:.0f} / "
                        f"{r['baseline']['memory']['peak_bytes'] / 2**20:.0f} MiB = {r['mem_ratio']:.3f}")
            log(msg)
        out.append(r)
    return out


# ---------------------------------------------------------------------- writing
def _fmt_ms(r: dict, who: str) -> str:
    s = r.get(who, {}).get("median_s")
    return "-" if s is None else f"{s * 1e3:.1f}"


def _fmt_mib(r: dict, who: str) -> str:
    m = r.get(who, {}).get("memory") or {}
    b = m.get("peak_bytes")
    return "-" if b is None else f"{b / 2**20:.1f}"


def _target_cell(r: dict, key: str) -> str:
    t = r.get("targets", {}).get(key)
    if t is None:
        return ""
    met = r.get("target_met", {}).get(key)
    return f"<= {t} {'met' if met else ('MISSED' if met is False else '?')}"


def markdown_table(doc: dict) -> str:
    meta = doc["meta"]
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
        memory,
        f"- load average before / after: {meta.get('load_before')} / {meta.get('load_after')}; "
        f"other busy processes at start: {meta.get('other_busy_processes')}",
    ]
    if meta.get("note"):
        lines.append(f"- note: {meta['note']}")
    lines += [
        "",
        "| group | case | ours | baseline | ours ms | base ms | time ratio | target | ratio of minima | ours peak MiB | base peak MiB | mem ratio | target |",
        "|---|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in doc["results"]:
        if "error" in r:
            lines.append(f"| {r['group']} | {r['name']} | {r['ours_label']} | {r['baseline_label']} | "
                         f"error: {r['error']} ||||||||| ")
            continue
        tr = f"{r['time_ratio']:.3f}"
        mr = f"{r['mem_ratio']:.3f}" if "mem_ratio" in r else "-"
        mins = f"{min(r['ours']['times_s']) / min(r['baseline']['times_s']):.3f}"
        lines.append(
            f"| {r['group']} | {r['name']} | {r['ours_label']} | {r['baseline_label']} | {_fmt_ms(r, 'ours')} | "
            f"{_fmt_ms(r, 'baseline')} | {tr} | {_target_cell(r, 'time')} | {mins} | {_fmt_mib(r, 'ours')} | "
            f"{_fmt_mib(r, 'baseline')} | {mr} | {_target_cell(r, 'mem')} |"
        )
    lines += _images_per_s_table(doc["results"])
    extra = meta.get("attention_equivalence")
    if extra:
        lines += ["", "Attention equivalence check (ours vs timm BottleneckAttn, copied weights, float64): "
                  f"max |diff| = {extra['max_abs_diff']:.3g} (output max {extra['max_abs_output']:.3g}; "
                  f"without the position term the difference would be {extra['max_abs_diff_without_position_term']:.3g})."]
    return "\n".join(lines) + "\n"


def _images_per_s_table(results: list[dict]) -> list[str]:
    rows = [r for r in results if "images_per_s" in r.get("ours", {})]
    if not rows:
        return []
    out = ["", "Images per second per CPU core (median pass; one process, one torch thread):", "",
           "| case | ours | ours img/s | baseline | baseline img/s |", "|---|---|---:|---|---:|"]
    for r in rows:
        out.append(f"| {r['name']} | {r['ours_label']} | {r['ours']['images_per_s']:.1f} | {r['baseline_label']} | "
                   f"{r['baseline']['images_per_s']:.1f} |")
    return out


def plot(doc: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return False
    rows = [r for r in doc["results"] if "error" not in r]
    if not rows:
        return False
    labels = [f"{r['group']}: {r['name']}" for r in rows]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(rows) + 1.6))
    y = range(len(rows))
    h = 0.38
    ax.barh([i - h / 2 for i in y], [r["time_ratio"] for r in rows], height=h, label="time ratio")
    ax.barh([i + h / 2 for i in y], [r.get("mem_ratio", 0) for r in rows], height=h, label="peak-memory ratio")
    for i, r in enumerate(rows):
        for key, off, mk in (("time", -h / 2, "|"), ("mem", h / 2, "|")):
            t = r.get("targets", {}).get(key)
            if t is not None:
                ax.plot([t], [i + off], marker=mk, color="red", markersize=12, mew=2)
    ax.axvline(1.0, color="gray", lw=0.8, ls="--")
    ax.set_yticks(list(y))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("ours / baseline (log scale; < 1 is better; red bars: targets)")
    ax.set_title(f"{doc['meta'].get('title', 'botnet bench')} ({doc['meta']['date_utc'][:10]})", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_results(doc: dict, out_dir: str | Path, stem: str) -> dict[str, str]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "md": out / f"{stem}.md", "png": out / f"{stem}.png"}
    paths["json"].write_text(json.dumps(doc, indent=2) + "\n")
    paths["md"].write_text(markdown_table(doc))
    if not plot(doc, paths["png"]):
        del paths["png"]
    return {k: str(v) for k, v in paths.items()}


def new_doc(*, title: str, command: str, warmup: int, repeats: int, note: str = "", device: str = "cpu") -> dict:
    machine = machine_info()
    machine["gpu_used"] = device == "cuda"
    return {
        "meta": {
            "title": title,
            "device": device,
            "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "command": command,
            "machine": machine,
            "warmup": warmup,
            "repeats": repeats,
            "load_before": _load(),
            "other_busy_processes": _other_python_jobs(),
            "note": note,
            "python_executable": sys.executable,
        },
        "results": [],
    }
