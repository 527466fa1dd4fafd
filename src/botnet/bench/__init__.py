"""Benchmarks: ours against a baseline in the same run, as ratios (see ``botnet bench --help``)."""
from botnet.bench.cases import SUITES, Comparison, build_step, make_suite  # noqa: F401
from botnet.bench.core import measure_peak_memory, time_interleaved  # noqa: F401
from botnet.bench.runner import run_comparisons, write_results  # noqa: F401
