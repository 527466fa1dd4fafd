"""A disk that fills during a checkpoint save: one line naming the folder and the space needed,
exit code 2, the previous checkpoint still resumes and no temporary file is left."""
import errno
import os

import pytest
import safetensors.torch
from safetensors import SafetensorError

from botnet.cli import main
from botnet.data import fashion_mnist as fm
from botnet.engine import checkpoint as ckpt

TINY = ["--set", "model.kwargs={widths: [4, 8, 8, 16], stem_width: 8}", "--no-progress", "--no-plots",
        "--eval-every", "0", "--threads", "1", "--limit-train", "64", "--limit-val", "32", "--batch-size", "32"]


def _full_disk(kind):
    if kind == "oserror":
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    # what safetensors 0.8 raises on a full tmpfs (measured): its own error type, the OS error only as text
    return SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


@pytest.mark.skipif(fm._complete(fm.SYSTEM_DIR) is None, reason="Fashion-MNIST not installed")
@pytest.mark.parametrize("kind,fail_at", [("oserror", 3), ("safetensors", 4)], ids=["state-write", "weights-write"])
def test_disk_full_during_a_save_is_one_line_and_keeps_the_checkpoint(tmp_path, capsys, monkeypatch, kind, fail_at):
    """The first save (step 1: state + weights) succeeds; the disk is full from save_file call ``fail_at`` on
    (the second save's state, or its weights), after a partial temporary file was written."""
    real, calls = safetensors.torch.save_file, {"n": 0}

    def save_file(tensors, filename, metadata=None):
        calls["n"] += 1
        if calls["n"] >= fail_at:
            with open(filename, "wb") as f:
                f.write(b"partial")
            raise _full_disk(kind)
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    run = tmp_path / "run"
    capsys.readouterr()
    rc = main(["train", *TINY, "--epochs", "2", "--save-every-steps", "1", "--output", str(run)])
    err = capsys.readouterr().err
    monkeypatch.undo()
    assert rc == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error:"), err
    line = lines[0]
    assert f"disk of {run}" in line and "needs about" in line and " MB free" in line, line
    assert f"--resume {run}" in line, line
    # the step-1 checkpoint is intact and resumable; nothing half-written is left beside it
    assert not [f for f in os.listdir(run) if f.endswith(".tmp")], os.listdir(run)
    _, meta = ckpt.check_resumable(run)
    assert meta["step"] == 1
    assert ckpt.load_checkpoint(run)["step"] == 1
