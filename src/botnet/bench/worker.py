"""Peak-memory worker: ``python -m botnet.bench.worker '<config json>'`` prints one JSON line.

Builds the configuration (imports, model, inputs), runs one warm-up step (not with
``measure_first_step``), returns freed memory to the OS, resets the resident-set high-water mark,
runs one more step, and reports how far above the pre-step resident set the process went. See
:mod:`botnet.bench.core`.
"""
from __future__ import annotations

import json
import resource
import sys


def main(argv: list[str]) -> int:
    cfg = json.loads(argv[0])
    from botnet.bench.cases import build_step
    from botnet.bench.core import read_status_kib, reset_peak_rss, trim_heap

    step = build_step(cfg)
    if not cfg.get("measure_first_step"):
        step()  # warm-up: one-time allocations (kernel caches, lazy modules) are not the step's peak
    trim_heap()  # (measure_first_step: an ONNX Runtime session keeps the first run's peak in its arena)
    rss_before = read_status_kib("VmRSS")
    if reset_peak_rss() and rss_before is not None:
        step()
        hwm = read_status_kib("VmHWM")
        method = "VmHWM after clear_refs minus VmRSS before the step"
        peak = (hwm - rss_before) * 1024
    else:  # no /proc: ru_maxrss is never reset, so this counts from the process's earlier peak
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        step()
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        method = "ru_maxrss delta (upper bound unknown: high-water mark not resettable)"
        peak = (after - before) * 1024
        rss_before = before
    print(json.dumps({"peak_bytes": int(peak), "rss_before_bytes": int(rss_before * 1024), "method": method}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
