"""A run folder belongs to one run: the lock, the new-run / --overwrite / --resume rules, resume into the
checkpoint's own folder (docs/run-folder.md)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import botnet
from botnet.cli import main
from botnet.data.builder import ResumableSampler
from botnet.engine import StepOutput, Task, TaskSetup, Trainer
from botnet.engine.checkpoint import read_metadata
from botnet.engine.config import ENGINE_DEFAULTS, merge
from botnet.engine.run_folder import (LOCK_NAME, RUN_DIRS, RUN_FILES, RunFolderBusy, RunFolderError, RunFolderLock,
                                      claim_run_folder, existing_run_files)
from botnet.errors import UserInputError


class Line(Task):
    """A linear fit in a few milliseconds: the engine's folder rules are the same for every task."""

    name, key_metric = "line", "neg_mse"

    def setup(self, cfg, dist):
        if cfg["data"].get("root") == "missing":
            from botnet.data.errors import DataError

            raise DataError("data folder missing does not exist")
        g = torch.Generator().manual_seed(0)
        x = torch.randn(64, 4, generator=g)
        ds = TensorDataset(x, x.sum(1, keepdim=True))
        sampler = ResumableSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=0, drop_last=True)
        return TaskSetup(model=nn.Linear(4, 1), arch="linear", model_kwargs={}, num_val=64, state={"ds": ds},
                         train_loader=DataLoader(ds, batch_size=16, sampler=sampler, drop_last=True))

    def train_step(self, model, batch, device, setup):
        x, y = batch
        return StepOutput({"loss": nn.functional.mse_loss(model(x), y)}, batch_size=len(x))

    def evaluate(self, model, setup, cfg, dist, desc="eval"):
        x, y = setup.state["ds"].tensors
        with torch.no_grad():
            return {"neg_mse": -nn.functional.mse_loss(model(x), y).item()}


def _cfg(run, **train):
    return merge(ENGINE_DEFAULTS, {"output": {"dir": str(run)}, "data": {"batch_size": 16},
                                   "optim": {"name": "sgd", "lr": 0.05, "weight_decay": 0.0},
                                   "train": {"epochs": 2, "progress": False, "plots": False, "threads": 1,
                                             "log_every": 1, **train}})


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _steps(run: Path, phase: str = "train") -> list[int]:
    return [r["step"] for r in map(json.loads, open(run / "metrics.jsonl")) if r["phase"] == phase]


# ----------------------------------------------------------------------------- the lock
def test_a_held_folder_is_refused_with_its_holder_and_nothing_is_written(tmp_path):
    run = tmp_path / "run"
    with RunFolderLock(run):
        before = _files(run)
        with pytest.raises(RunFolderBusy, match=f"{run} is in use by another botnet run \\(pid {os.getpid()}"):
            Trainer(Line(), _cfg(run)).run()
        assert _files(run) == before and list(run.iterdir()) == [run / LOCK_NAME]
    assert not run.exists()  # the lock made the folder for nothing: it is gone again


def test_the_lock_lives_as_long_as_the_run(tmp_path):
    run = tmp_path / "run"
    seen = []

    class Spy(Line):
        def train_step(self, model, batch, device, setup):
            if not seen:  # while training: held, and it says who holds it
                seen.append(json.loads((run / LOCK_NAME).read_text()))
                with pytest.raises(RunFolderBusy):
                    RunFolderLock(run).acquire()
            return super().train_step(model, batch, device, setup)

    Trainer(Spy(), _cfg(run)).run()
    assert seen[0]["pid"] == os.getpid() and seen[0]["host"]
    assert not (run / LOCK_NAME).exists()  # released and removed at the end
    with RunFolderLock(run):  # free again
        pass


# ----------------------------------------------------------------------------- new run, --overwrite, --resume
def test_a_new_run_refuses_a_folder_that_holds_a_run(tmp_path):
    run = tmp_path / "run"
    Trainer(Line(), _cfg(run)).run()
    before = _files(run)
    with pytest.raises(RunFolderError, match="already holds a run .*--resume .*--overwrite"):
        Trainer(Line(), _cfg(run, seed=1)).run()
    assert _files(run) == before


def test_an_empty_folder_or_one_of_unrelated_files_is_fine(tmp_path):
    run = tmp_path / "mine"
    (run / "notes").mkdir(parents=True)
    (run / "notes" / "plan.txt").write_text("keep")
    (run / "data.csv").write_text("1,2\n")
    assert existing_run_files(run) == []
    Trainer(Line(), _cfg(run)).run()
    assert (run / "notes" / "plan.txt").read_text() == "keep" and (run / "data.csv").read_text() == "1,2\n"
    assert (run / "last.safetensors").is_file()


def test_overwrite_replaces_only_botnets_files_after_the_inputs_are_checked(tmp_path):
    run = tmp_path / "run"
    Trainer(Line(), _cfg(run, epochs=3)).run()
    (run / "notes.txt").write_text("mine")
    (run / "predictions").mkdir()  # a name botnet writes (detection drawings): part of the old run
    (run / "predictions" / "old.png").write_bytes(b"x")
    (run / "tb" / "my-notes.md").write_text("mine too")  # a user's file inside a folder botnet writes
    old = _files(run)
    # a bad input found before training leaves the old run whole, --overwrite or not
    bad = _cfg(run, seed=1)
    bad["data"]["root"] = "missing"
    with pytest.raises(UserInputError, match="missing"):
        Trainer(Line(), bad, overwrite=True).run()
    assert _files(run) == old
    Trainer(Line(), _cfg(run, seed=1), overwrite=True).run()
    assert (run / "notes.txt").read_text() == "mine" and not (run / "predictions").exists()
    assert (run / "tb" / "my-notes.md").read_text() == "mine too"
    assert json.loads((run / "config.json").read_text())["train"]["seed"] == 1
    assert _steps(run, "train_epoch") == [4, 8]  # only the new run's rows (the old one had 3 epochs)
    assert len(list((run / "tb").glob("events.out.tfevents.*"))) == 1  # one TensorBoard events file, the new run's


def test_resume_writes_into_the_checkpoint_folder_not_the_recorded_output_dir(tmp_path):
    """A run moved away from where it was trained is resumed where it is now; its old place is not touched."""
    old, moved = tmp_path / "old", tmp_path / "moved"
    Trainer(Line(), _cfg(old, epochs=4, max_steps=3)).run()
    shutil.move(old, moved)
    old.mkdir()  # meanwhile another run (or anything) lives at the recorded place
    (old / "other.txt").write_text("not yours")
    meta_cfg = read_metadata(moved / "last.safetensors")["config"]
    assert meta_cfg["output"]["dir"] == str(old)
    summary = Trainer(Line(), merge(meta_cfg, {"train": {"max_steps": None}}),
                      resume=moved / "last.safetensors").run()
    assert summary["status"] == "completed" and summary["run_dir"] == str(moved)
    assert _files(old) == {"other.txt": b"not yours"}
    assert _steps(moved) == list(range(1, 17))  # steps 1-3 from the first part, 4-16 after the resume
    assert json.loads((moved / "config.json").read_text())["output"]["dir"] == str(moved)


def test_the_list_of_botnet_files_covers_a_run_and_the_docs_name_them(tmp_path):
    run = tmp_path / "run"
    Trainer(Line(), _cfg(run, plots=True)).run()
    written = {p.name + ("/" if p.is_dir() else "") for p in run.iterdir()}
    assert written <= {*RUN_FILES, *(d + "/" for d in RUN_DIRS)} and {"loss.png", "tb/"} <= written
    doc = (Path(__file__).resolve().parents[2] / "docs" / "run-folder.md").read_text()
    assert all(f"`{n}" in doc for n in (*RUN_FILES, *RUN_DIRS, LOCK_NAME))


def test_claim_checks_the_kind_of_path_first(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    for p, words in ((f, "is a file"), (f / "sub", "cannot be created")):
        with pytest.raises(UserInputError, match=words):
            claim_run_folder(p)
    assert f.read_text() == "x" and sorted(tmp_path.iterdir()) == [f]


# ----------------------------------------------------------------------------- real processes
needs_data = pytest.mark.skipif(not os.path.isfile("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"),
                                reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
TINY = ["--set", "model.kwargs={widths: [4, 8, 8, 16], stem_width: 8}", "--no-progress", "--no-plots",
        "--eval-every", "0", "--threads", "1", "--limit-train", "64", "--limit-val", "32", "--batch-size", "32",
        "--set", "train.log_every=1"]


def _start_training(run: Path, *args) -> subprocess.Popen:
    """``botnet train`` in another process that keeps training (until a signal); returns once it holds ``run``."""
    src = str(Path(botnet.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "botnet.cli", "train", "--output", str(run), "--epochs", "100000",
                             *TINY, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None and not (run / "last.safetensors").is_file():
        time.sleep(0.1)  # training is under way once it has saved
    try:
        assert json.loads((run / LOCK_NAME).read_text())["pid"] == proc.pid
    except (AssertionError, OSError, ValueError, KeyError):
        proc.kill()
        pytest.fail(f"the training does not hold {run}: {proc.communicate()[0][-2000:]}")
    return proc


@needs_data
def test_two_trainings_on_one_folder_the_second_gets_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    first = _start_training(run, "--seed", "7")
    try:
        capsys.readouterr()
        rc = main(["train", "--output", str(run), *TINY, "--seed", "8", "--epochs", "1"])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err
        assert f"{run} is in use by another botnet run (pid {first.pid}" in err
        first.send_signal(signal.SIGINT)  # Ctrl-C: the first run saves and ends (exit 130)
        out = first.communicate(timeout=120)[0]
    finally:
        first.kill()
    assert first.returncode == 130, out[-2000:]
    assert json.loads((run / "config.json").read_text())["train"]["seed"] == 7
    steps = _steps(run)
    assert steps == list(range(1, len(steps) + 1))  # one run's rows only, in order
    assert main(["train", "--resume", str(run), "--max-steps", str(steps[-1] + 1)]) == 0  # and it resumes


@needs_data
def test_a_killed_run_leaves_no_lock_behind(tmp_path, capsys):
    run = tmp_path / "run"
    holder = _start_training(run)
    holder.send_signal(signal.SIGKILL)
    holder.communicate(timeout=60)
    assert json.loads((run / LOCK_NAME).read_text())["pid"] == holder.pid  # its text stays; the kernel dropped the lock
    # (--overwrite, not --resume: whether the kill left a resumable checkpoint is another matter, docs/engine.md)
    assert main(["train", "--output", str(run), "--overwrite", *TINY, "--max-steps", "1"]) == 0
    assert not (run / LOCK_NAME).exists()


@needs_data
def test_a_held_folder_stops_a_torchrun_job_at_once(tmp_path):
    """Rank 0 refuses before the process group exists, so the other rank is stopped instead of left waiting."""
    run = tmp_path / "run"
    src = str(Path(botnet.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "botnet.cli",
           "train", "--output", str(run), "--device", "cpu", *TINY, "--batch-size", "16", "--epochs", "1"]
    with RunFolderLock(run):
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert list(run.iterdir()) == [run / LOCK_NAME]
    assert p.returncode != 0
    lines = [ln for ln in (p.stdout + p.stderr).splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and f"run folder {run} is in use" in lines[0] and f"pid {os.getpid()}" in lines[0], \
        p.stdout[-2000:] + p.stderr[-2000:]


def test_a_forked_child_does_not_keep_a_killed_runs_lock(tmp_path):
    """A DataLoader worker is a fork of its run and used to inherit the lock's descriptor: with the run killed,
    the orphaned worker kept the folder locked until it noticed (seconds), long enough for the run torchrun
    restarts at once to be refused its own folder."""
    run = tmp_path / "run"
    rd, wr = os.pipe()
    run_pid = os.fork()
    if run_pid == 0:  # the run: takes the lock, forks its worker, is killed
        try:
            lock = RunFolderLock(run).acquire()  # noqa: F841 (held while the run lives)
            worker = os.fork()
            if worker == 0:
                time.sleep(60)
                os._exit(0)
            os.write(wr, str(worker).encode())
        finally:
            os.kill(os.getpid(), signal.SIGKILL)
    os.close(wr)
    os.waitpid(run_pid, 0)
    worker = int(os.read(rd, 32) or 0)
    os.close(rd)
    assert worker
    try:
        os.kill(worker, 0)  # the worker outlives its run ...
        with RunFolderLock(run):  # ... and the folder is free at once
            pass
    finally:
        os.kill(worker, signal.SIGKILL)
