"""Kill soak: SIGKILL one `botnet train` run (saving every step) N times at random moments; after
every kill the folder must pass botnet's own resume check, and the run goes on with --resume.

    python scripts/kill_soak.py --kills 100 [--out DIR] [--seed S] [--max-delay 0.3]

Each round starts the run (fresh the first time, then `--resume RUN`), waits until this process
has saved at least once, sleeps a random delay and sends SIGKILL. It then checks the folder with
`botnet.engine.checkpoint.check_resumable` and notes what the kill left (a mixed pair resumed from
last.prev.*, a previous pair or temporary files). Ends with one summary line; exit 1 if any folder
was not resumable. Needs Fashion-MNIST (/usr/share/datasets/fashion-mnist).
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# --src OTHER/src soaks another checkout (e.g. the code before crash-consistent saves) with this script
SRC = Path(sys.argv[sys.argv.index("--src") + 1]).resolve() if "--src" in sys.argv else ROOT / "src"
sys.path.insert(0, str(SRC))

from botnet.engine import checkpoint as ckpt  # noqa: E402
from botnet.errors import CheckpointError  # noqa: E402

TINY = ["--set", "model.kwargs={widths: [4, 8, 8, 16], stem_width: 8}", "--no-progress", "--no-plots",
        "--eval-every", "0", "--threads", "1", "--limit-train", "64", "--limit-val", "32", "--batch-size", "32"]


def saved_step(run: Path) -> int:
    try:
        return int(ckpt.read_metadata(run / "last.safetensors")["step"])
    except (CheckpointError, KeyError):
        return -1


def one_round(run: Path, first: bool, delay: float, log) -> tuple[bool, str]:
    """Start, wait for a save of this process, sleep ``delay``, SIGKILL; True when it was killed."""
    args = ["train", *TINY, "--epochs", "5000", "--save-every-steps", "1", "--output", str(run)]
    if not first:
        args = ["train", "--resume", str(run), "--no-progress", "--threads", "1"]
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    before = saved_step(run)
    proc = subprocess.Popen([sys.executable, "-m", "botnet.cli", *args], env=env, stdout=log, stderr=log)
    deadline = time.monotonic() + 300
    while saved_step(run) <= before and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc.returncode == -signal.SIGKILL, f"exit {proc.returncode}"


def leftovers(run: Path) -> dict[str, bool]:
    names = os.listdir(run)
    select = getattr(ckpt, "select_resume_pair", lambda r: (None, None))  # absent in older checkouts
    return {"mixed": select(run)[1] is not None, "prev": any(".prev." in n for n in names),
            "temp": any(n.endswith(".tmp") for n in names)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=100)
    ap.add_argument("--out", default=None, help="run folder (default: a new temporary folder)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--src", default=None, help="the botnet source tree to soak (default: this checkout's src)")
    ap.add_argument("--keep-going", action="store_true",
                    help="after a folder that does not resume, start a new run (to measure a failure rate)")
    ap.add_argument("--max-delay", type=float, default=0.3, help="seconds after this process's first save")
    a = ap.parse_args()
    seed = a.seed if a.seed is not None else random.randrange(10**6)
    rng = random.Random(seed)
    run = Path(a.out or tempfile.mkdtemp(prefix="kill-soak-")) / "run"
    counts = {"killed": 0, "resumable": 0, "mixed": 0, "prev": 0, "temp": 0}
    failures, t0, steps = [], time.monotonic(), []
    fresh = True
    with open(run.parent / "soak.log", "ab") as log:
        for i in range(a.kills):
            killed, how = one_round(run, fresh, rng.uniform(0.0, a.max_delay), log)
            if not killed:
                failures.append(f"round {i}: the run was not killed ({how})")
                break
            counts["killed"] += 1
            fresh = False
            try:
                for k, v in leftovers(run).items():
                    counts[k] += v
                _, meta = ckpt.check_resumable(run)
                counts["resumable"] += 1
                steps.append(int(meta["step"]))
            except CheckpointError as e:
                failures.append(f"round {i}: {e}")
                if not a.keep_going:
                    break
                run, fresh = run.with_name(f"run{i}"), True  # the lost run cannot go on: start another
            print(f"round {i + 1}/{a.kills}: step {steps[-1] if steps else '?'} {counts}", flush=True)
    for f in failures:
        print("FAIL", f)
    print(f"kill-soak: {counts['resumable']}/{counts['killed']} SIGKILLs left a resumable folder ({'this checkout' if SRC == ROOT / 'src' else '--src'}, seed {seed}, max delay "
          f"{a.max_delay} s); {counts['mixed']} left a mixed pair (resumed from last.prev.*), {counts['prev']} a "
          f"previous pair, {counts['temp']} temporary files; step {steps[0] if steps else '?'} -> "
          f"{steps[-1] if steps else '?'}; {time.monotonic() - t0:.0f} s")
    return 0 if counts["resumable"] == a.kills and not failures else 1


if __name__ == "__main__":
    sys.exit(main())
