"""--resume continues exactly: N steps in one go == k steps, stop, resume for N-k (deterministic CPU mode).

The runs use the toy segmentation task (tests/toyseg): its augmentation draws from the RNG, it has
BatchNorm and a BoT attention layer, and it needs no data set installed."""
import os
import signal

import torch
from safetensors.torch import load_file

import toyseg.task
from botnet.cli import main
from botnet.engine.checkpoint import read_training_state

ARGS = ["toyseg", "train", "--no-progress", "--no-plots", "--threads", "1", "--deterministic", "--eval-every", "0",
        "--epochs", "2"]


def _max_diff(a, b):
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def test_stop_and_resume_gives_identical_weights(tmp_path):
    # EMA, augmentation and a mid-epoch stop are all part of the state to restore
    args = ARGS + ["--ema", "--ema-decay", "0.9"]
    assert main(args + ["--output", str(tmp_path / "a"), "--max-steps", "12"]) == 0
    assert main(args + ["--output", str(tmp_path / "b"), "--max-steps", "5"]) == 0
    mid = load_file(tmp_path / "b" / "last.safetensors")
    assert (tmp_path / "b" / "best.safetensors").is_file()  # a run directory holds best (weights only) and last
    # resume by directory, without --config: the run's saved config and last.safetensors are used
    assert main(args + ["--max-steps", "12", "--resume", str(tmp_path / "b")]) == 0
    a, b = load_file(tmp_path / "a" / "last.safetensors"), load_file(tmp_path / "b" / "last.safetensors")
    assert _max_diff(a, mid) > 1e-4  # training really moved on after the resume
    assert _max_diff(a, b) == 0.0
    sa = read_training_state(tmp_path / "a" / "last.state.safetensors")
    sb = read_training_state(tmp_path / "b" / "last.state.safetensors")
    assert sa["step"] == sb["step"] == 12
    assert all(torch.equal(sa["ema"][k], sb["ema"][k]) for k in sa["ema"])


def test_ctrl_c_saves_and_resume_finishes_identically(tmp_path, monkeypatch):
    assert main(ARGS + ["--output", str(tmp_path / "ref")]) == 0

    calls = {"n": 0}
    step = toyseg.task.ToySegTask.train_step

    def step_then_ctrl_c(self, *a):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl-C during step 3
        return step(self, *a)

    monkeypatch.setattr(toyseg.task.ToySegTask, "train_step", step_then_ctrl_c)
    assert main(ARGS + ["--output", str(tmp_path / "run")]) == 130
    monkeypatch.undo()
    state = read_training_state(tmp_path / "run" / "last.state.safetensors")
    assert state["step"] == 3 and state["extra"]["batch_in_epoch"] == 3
    assert main(ARGS + ["--output", str(tmp_path / "run"), "--resume", str(tmp_path / "run")]) == 0
    assert _max_diff(load_file(tmp_path / "ref" / "last.safetensors"), load_file(tmp_path / "run" / "last.safetensors")) == 0.0
