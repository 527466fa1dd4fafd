"""Progress bars only on a terminal; plain per-step lines elsewhere and with --no-progress; after a
time-budget fit, one schedule line and an epoch counter out of the fitted epochs."""
import io
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import botnet.engine.budget as budget_mod
from botnet.data import fashion_mnist as fm
from botnet.engine import Trainer
from botnet.log import progress_enabled
from test_trainer import Regression, _cfg

SRC = str(Path(__file__).resolve().parents[2] / "src")
STEP_LINE = re.compile(r"^epoch (\d+)/(\d+) step (\d+)/(\d+): loss \d+\.\d{4} \| lr \S+ \| \d+ img/s$")


class _Tty(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def lines():
    """The INFO messages of the botnet logger, as the command line shows them."""
    out: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: out.append(record.getMessage())
    logger = logging.getLogger("botnet")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield out
    logger.removeHandler(handler)
    logger.setLevel(level)


def _steps(lines):
    return [tuple(int(g) for g in m.groups()) for m in map(STEP_LINE.match, lines) if m]


def test_progress_enabled_only_on_a_terminal():
    assert progress_enabled(True, _Tty()) and not progress_enabled(False, _Tty())
    assert not progress_enabled(True, io.StringIO())  # a file or a pipe


def test_a_terminal_gets_a_bar_and_no_progress_gets_lines(tmp_path, monkeypatch, lines):
    # 256 items / batch 32 = 8 steps an epoch, 2 epochs; a line every 3 steps and at each epoch end
    monkeypatch.setattr(sys, "stderr", _Tty())
    Trainer(Regression(), _cfg(tmp_path / "bar", epochs=2, progress=True, log_every=3)).run()
    assert "\r" in sys.stderr.getvalue() and _steps(lines) == []  # the bar shows the loss, no lines beside it
    monkeypatch.setattr(sys, "stderr", _Tty())
    Trainer(Regression(), _cfg(tmp_path / "lines", epochs=2, progress=False, log_every=3)).run()
    assert sys.stderr.getvalue() == ""
    assert _steps(lines) == [(1, 2, 3, 16), (1, 2, 6, 16), (1, 2, 8, 16), (2, 2, 9, 16), (2, 2, 12, 16),
                             (2, 2, 15, 16), (2, 2, 16, 16)]


def test_budget_fit_says_so_once_and_counts_the_fitted_epochs(tmp_path, monkeypatch, lines):
    # 40 epochs planned (320 steps); the budget holds 26 epochs at the first fit, 25 at the next ones
    targets = iter([208, 200, 199, 198])
    monkeypatch.setattr(budget_mod.BudgetFitter, "target_steps", lambda self, step, ips: next(targets, 198))
    cfg = _cfg(tmp_path, epochs=40, progress=False, log_every=8, time_budget=3600, eval_every=0)
    summary = Trainer(Regression(), cfg).run()
    fits = [m for m in lines if "schedule set to" in m]
    assert len(fits) == 1 and fits[0].startswith("time budget 3600s: schedule set to 208 steps (26.00 epochs;")
    at = lines.index(fits[0])
    before, after = _steps(lines[:at]), _steps(lines[at:])
    assert summary["steps"] == 200 and after[-1] == (25, 25, 200, 200)
    assert len(before) >= 5 and {(e, s) for _, e, _, s in before} == {(40, 320)}
    assert (after[0][1], after[0][3]) == (26, 208) and {(e, s) for _, e, _, s in after} == {(26, 208), (25, 200)}


@pytest.mark.skipif(fm._complete(fm.SYSTEM_DIR) is None, reason="Fashion-MNIST not installed")
def test_training_into_a_log_file_writes_plain_lines(tmp_path):
    log_file = tmp_path / "train.log"
    cmd = [sys.executable, "-m", "botnet.cli", "train", "--limit-train", "256", "--limit-val", "64",
           "--set", "model.kwargs={widths: [4, 8, 8, 16], stem_width: 8}", "--no-plots", "--eval-every", "0",
           "--threads", "1", "--batch-size", "64", "--epochs", "2", "--set", "train.log_every=3",
           "--output", str(tmp_path / "run")]
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(log_file, "w") as f:  # stdout and stderr into a file, as `botnet train > log 2>&1`
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=300).returncode
    text = log_file.read_text()
    assert rc == 0, text
    assert "\r" not in text
    assert _steps(text.splitlines()) == [(1, 2, 3, 8), (1, 2, 4, 8), (2, 2, 6, 8), (2, 2, 8, 8)]
