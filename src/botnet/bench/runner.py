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
from botnet.bench.report import fmt_mib, markdown_table, mem_ratio, plot

__all__ = ["run_comparison", "run_comparisons", "machine_info", "write_results", "markdown_table", "plot"]


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
            if "memory" in r["ours"]:  # as the table shows it: no ratio of 0.0 / 0.0 MiB
                mr = mem_ratio(r)
                msg += (f"; peak mem {fmt_mib(r, 'ours')} / {fmt_mib(r, 'baseline')} MiB"
                        + (f" = {mr:.3f}" if mr is not None else ""))
            log(msg)
        out.append(r)
    return out


# ---------------------------------------------------------------------- writing
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
