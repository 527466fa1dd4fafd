"""A save killed at any of its steps (SIGKILL, or a second Ctrl-C) leaves a folder that resumes
from the new save or from the previous one, never from neither; the next save works and tidies up."""
import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from botnet.cli import main
from botnet.data import fashion_mnist as fm
from botnet.engine import checkpoint as ckpt
from botnet.errors import CheckpointError
from botnet.io import atomic

PAIR = ["last.safetensors", "last.state.safetensors"]
OLD, NEW, NEXT = 1, 2, 3


def _trained(seed):
    """A small model and an AdamW state (moments, step counts) that differ per seed."""
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.AdamW(m.parameters(), lr=0.1)
    m(torch.randn(3, 4)).sum().backward()
    opt.step()
    return m, opt


def _save(run, step, pair=True, trained=None):
    m, opt = trained or _trained(step)
    name = "last" if pair else "best"
    ckpt.save_checkpoint(run / name, m, optimizer=opt if pair else None, step=step, arch="mlp", save_state=pair)


def _kill_during_save(run, point, pair=True):
    """Save step NEW in a forked child that SIGKILLs itself at ``point`` (through the env hook);
    returns True when the kill happened (False: the sequence never reached ``point``)."""
    # trained here: a forked child cannot run autograd once the parent's autograd threads have started
    trained = _trained(NEW)
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        code = 1
        try:
            os.environ[atomic.FAULT_ENV] = f"{point}:1"
            _save(run, NEW, pair, trained)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return True
    assert os.WEXITSTATUS(status) == 0, "the save failed in the child"
    return False


def _expected(point, interrupted):
    """Before the weights are renamed into place the old pair is the newest complete one."""
    if not interrupted:
        return NEW
    return NEW if ckpt.SAVE_POINTS.index(point) > ckpt.SAVE_POINTS.index("weights.rename") else OLD


def _assert_resumes(run, step):
    """load_checkpoint gives ``step`` with exactly that save's weights and optimizer state."""
    ref_m, ref_opt = _trained(step)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.AdamW(m.parameters(), lr=0.1)
    wpath, meta = ckpt.check_resumable(run)
    assert meta["step"] == step
    info = ckpt.load_checkpoint(run, m, optimizer=opt)
    assert info["step"] == step
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), ref_m.state_dict().values()))
    got, ref = opt.state_dict()["state"], ref_opt.state_dict()["state"]
    assert got.keys() == ref.keys()
    for k in ref:
        assert all(torch.equal(got[k][n], ref[k][n]) for n in ("exp_avg", "exp_avg_sq", "step"))
    return wpath


def _assert_next_save_tidies(run):
    _save(run, NEXT)
    _assert_resumes(run, NEXT)
    atomic.remove_stale_temp_files(run)  # what a killed save left is removed at the next start
    assert sorted(os.listdir(run)) == PAIR  # the previous pair is gone once the new one is complete


def _good_folder(tmp_path, name, mixed=False):
    run = tmp_path / name
    run.mkdir()
    _save(run, OLD)
    if mixed:  # a save killed between its two renames: last.state is NEW, last (weights) is OLD
        assert _kill_during_save(run, "weights.rename")
        assert ckpt.select_resume_pair(run)[0].name == "last.prev.safetensors"
    return run


@pytest.mark.parametrize("mixed", [False, True], ids=["complete", "after-an-interrupted-save"])
def test_sigkill_at_every_step_of_a_save_resumes(tmp_path, mixed):
    """Over a complete pair, and over a folder a killed save had left mixed (its previous pair is
    the good one and must survive a second interrupted save)."""
    killed = []
    for point in ckpt.SAVE_POINTS:
        run = _good_folder(tmp_path, f"{point}", mixed)
        interrupted = _kill_during_save(run, point)
        killed.append(interrupted)
        step = _expected(point, interrupted)
        used = _assert_resumes(run, step)
        # the previous pair is taken only while the current one is mixed (between the two renames)
        assert used.name == ("last.prev.safetensors" if step == OLD and (mixed or point == "weights.rename")
                             else "last.safetensors"), point
        _assert_next_save_tidies(run)
    # every step is reached over a complete pair; over a mixed one the links of the current pair are skipped
    linking = {"prev.state.link", "prev.state.rename", "prev.weights.link", "prev.weights.rename", "prev.dir.fsync"}
    assert killed == [not (mixed and p in linking) for p in ckpt.SAVE_POINTS]


def test_second_ctrl_c_at_every_step_of_a_save_resumes(tmp_path, monkeypatch):
    """KeyboardInterrupt raised at each step: it propagates, leaves no temporary file, and the
    folder resumes from the old or the new save."""
    for point in ckpt.SAVE_POINTS:
        run = _good_folder(tmp_path, point)

        def ctrl_c(p, point=point):
            if p == point:
                raise KeyboardInterrupt

        monkeypatch.setattr(atomic, "fault_hook", ctrl_c)
        with pytest.raises(KeyboardInterrupt):
            _save(run, NEW)
        monkeypatch.setattr(atomic, "fault_hook", None)
        assert not [f for f in os.listdir(run) if f.endswith(".tmp")], point
        _assert_resumes(run, _expected(point, True))
        _assert_next_save_tidies(run)


def test_best_weights_survive_a_kill_at_every_step(tmp_path):
    """best.safetensors (weights only) is the old or the new file, whole, at every kill point."""
    for point in ("weights.write", "weights.fsync", "weights.rename", "dir.fsync", "done"):
        run = tmp_path / point
        run.mkdir()
        _save(run, OLD, pair=False)
        interrupted = _kill_during_save(run, point, pair=False)
        assert interrupted
        step = _expected(point, interrupted)
        m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        assert ckpt.load_weights(m, run / "best.safetensors")["step"] == step
        assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), _trained(step)[0].state_dict().values()))
        assert atomic.remove_stale_temp_files(run) or point in ("dir.fsync", "done")
        assert os.listdir(run) == ["best.safetensors"]


def test_previous_pair_is_a_copy_where_hard_links_are_unsupported(tmp_path, monkeypatch):
    run = _good_folder(tmp_path, "run")

    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    def ctrl_c(p):
        if p == "weights.rename":  # the state is renamed, the weights not yet: only the copy is complete
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "link", no_links)
    monkeypatch.setattr(atomic, "fault_hook", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        _save(run, NEW)
    monkeypatch.undo()
    assert os.stat(run / "last.prev.safetensors").st_nlink == 1  # a copy, not a link
    assert _assert_resumes(run, OLD).name == "last.prev.safetensors"
    _assert_next_save_tidies(run)


def test_resume_auto_finds_a_folder_with_only_the_previous_pair(tmp_path):
    run = _good_folder(tmp_path, "run", mixed=True)
    (run / "last.safetensors").unlink()  # only last.state (NEW) and the previous pair (OLD) are left
    assert ckpt.has_checkpoint(run)
    assert ckpt.check_resumable(run)[0].name == "last.prev.safetensors"
    _assert_resumes(run, OLD)
    _assert_next_save_tidies(run)


needs_data = pytest.mark.skipif(fm._complete(fm.SYSTEM_DIR) is None, reason="Fashion-MNIST not installed")
TINY = ["--set", "model.kwargs={widths: [4, 8, 8, 16], stem_width: 8}", "--no-progress", "--no-plots",
        "--eval-every", "0", "--threads", "1", "--limit-train", "64", "--limit-val", "32", "--batch-size", "32"]


def _saved_step(run):
    try:
        return ckpt.read_metadata(run / "last.safetensors")["step"]
    except CheckpointError:  # not written yet
        return 0


def _train_until_killed(args, kill_step=None, delay=0.0, fault=None):
    """Run `botnet ARGS` in a child; SIGKILL it ``delay`` s after it saved step ``kill_step``, or let the
    fault hook (``fault``: BOTNET_FAULT_KILL_AT) kill it. Returns the child's stderr."""
    run = Path(args[args.index("--output") + 1])
    env = {**os.environ, "PYTHONPATH": str(Path(ckpt.__file__).parents[2])}
    if fault:
        env[atomic.FAULT_ENV] = fault
    proc = subprocess.Popen([sys.executable, "-m", "botnet.cli", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while kill_step and _saved_step(run) < kill_step and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        if kill_step:
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL, f"the run was not killed: {err.decode()!r}"
    return err.decode()


@needs_data
def test_cli_train_killed_at_a_random_moment_then_resume_finishes(tmp_path, capsys):
    """`botnet train` saving every step, killed between the two renames of a random save (fault hook),
    resumed with `--resume auto` and SIGKILLed again at a random moment (a random step, then a random
    fraction of a step and its save); the same command with `--resume auto` finishes the planned 40 steps."""
    run, rng = tmp_path / "run", random.Random()
    first, kill_step, delay = rng.randrange(2, 12), rng.randrange(14, 25), rng.uniform(0.0, 0.06)
    why = f"save {first} killed between its renames, then a kill after step {kill_step} + {delay:.3f} s"
    args = ["train", *TINY, "--epochs", "20", "--save-every-steps", "1", "--output", str(run)]
    _train_until_killed(args, fault=f"weights.rename:{first}")
    used, note = ckpt.select_resume_pair(run)
    assert used.name == "last.prev.safetensors" and note, why  # last.* is mixed: the previous pair is taken
    assert 1 <= ckpt.check_resumable(run)[1]["step"] < first, why  # saves: every step, and at each epoch's end
    _train_until_killed([*args, "--resume", "auto"], kill_step, delay)
    _, meta = ckpt.check_resumable(run)
    assert kill_step <= meta["step"] < 40, why
    capsys.readouterr()
    assert main([*args, "--resume", "auto"]) == 0, why  # the same command again, continuing where it was killed
    assert f"resumed from {run}" in capsys.readouterr().out, why
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 40, (why, summary)
    assert sorted(f for f in os.listdir(run) if "safetensors" in f) == ["best.safetensors", *PAIR]


def test_ema_weights_are_read_from_one_save_after_an_interrupted_one(tmp_path):
    """``eval --ema`` reads the EMA from the state file: after a kill between the two renames it
    takes the previous complete pair, not a state file of another save."""
    from timm.utils import ModelEmaV3

    for step in (OLD, NEW):
        m, opt = _trained(step)
        ema = ModelEmaV3(m, decay=0.0)
        ckpt.save_checkpoint(tmp_path / "last", m, optimizer=opt, ema=ema, step=step, arch="mlp")
    m, opt = _trained(NEXT)
    os.environ[atomic.FAULT_ENV] = "weights.rename:1"
    pid = os.fork()
    if pid == 0:
        try:
            ckpt.save_checkpoint(tmp_path / "last", m, optimizer=opt, ema=ModelEmaV3(m, decay=0.0), step=NEXT,
                                 arch="mlp")
        finally:
            os._exit(1)
    del os.environ[atomic.FAULT_ENV]
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status)
    target = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    meta = ckpt.load_weights(target, tmp_path / "last.safetensors", use_ema=True)
    assert meta["step"] == NEW
    ref, _ = _trained(NEW)
    assert all(torch.equal(a, b) for a, b in zip(target.state_dict().values(), ref.state_dict().values()))
