"""Run folders from the command line: every refusal is one line (exit 2) before any work, and changes nothing.

Training commands (train, demo, detect train, detect demo) on a folder that holds a run, is held by
another process, or is a path of the wrong kind; --resume with another --output or with --overwrite;
--resume of a moved run writes into the folder it is in now."""
import json
import os
import shutil
from pathlib import Path

import pytest

from botnet.cli import main
from botnet.engine.run_folder import LOCK_NAME, RunFolderLock
from helpers import assert_one_line_error, run

needs_data = pytest.mark.skipif(not os.path.isfile("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"),
                                reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
TINY = ["--set", "model.kwargs={widths: [4, 8, 8, 16], stem_width: 8}", "--no-progress", "--no-plots",
        "--eval-every", "0", "--threads", "1", "--limit-train", "64", "--limit-val", "32", "--batch-size", "32"]


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else b"/") for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def old_run(tmp_path_factory):
    """A run stopped after 1 of 4 steps (resumable, not finished)."""
    run = tmp_path_factory.mktemp("rf") / "run"
    assert main(["train", "--output", str(run), "--epochs", "2", "--max-steps", "1", *TINY]) == 0
    return run


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    """An empty working folder: a refused command must not create runs/ or data/ in it either."""
    d = tmp_path / "cwd"
    d.mkdir()
    monkeypatch.chdir(d)
    return d


# tiny settings, so that a command which failed to refuse would end in seconds
DET = ["--set", "model.kwargs={layers: [1, 1, 1, 3], widths: [8, 16, 32, 64], stem_width: 8}", "--no-progress",
       "--set", "data.mosaic={num_train: 4, num_val: 2, canvas: 96, min_items: 1, max_items: 2, min_item_size: 24, "
       "max_item_size: 48}", "--set", "model.canvas=96", "--epochs", "1", "--batch-size", "2", "--threads", "1"]
CLS = [*TINY, "--epochs", "1"]


@needs_data
@pytest.mark.parametrize("cmd", [["train", *CLS], ["demo", *CLS, "--attention-images", "0"], ["detect", "train", *DET],
                                 ["detect", "demo", *DET]],
                         ids=["train", "demo", "detect-train", "detect-demo"])
def test_a_folder_that_holds_a_run_is_refused_by_every_training_command(cmd, old_run, cwd, capsys):
    before = _tree(old_run)
    rc, _, err = run(capsys, [*cmd, "--output", old_run])
    assert_one_line_error(rc, err, str(old_run), "already holds a run", f"--resume {old_run}", "--overwrite")
    assert _tree(old_run) == before and list(cwd.iterdir()) == []


@pytest.mark.parametrize("cmd", [["train", *CLS], ["demo", *CLS], ["detect", "train", *DET], ["detect", "demo", *DET]],
                         ids=["train", "demo", "detect-train", "detect-demo"])
def test_output_of_the_wrong_kind_is_one_line(cmd, tmp_path, cwd, capsys):
    f = tmp_path / "notes.txt"
    f.write_text("hello\n")
    for out, words in ((f, [str(f), "is a file"]), (f / "run", [str(f), "is a file"])):
        rc, _, err = run(capsys, [*cmd, "--output", out])
        assert_one_line_error(rc, err, *words)
    assert f.read_text() == "hello\n" and sorted(tmp_path.iterdir()) == [cwd, f] and list(cwd.iterdir()) == []


@needs_data
@pytest.mark.parametrize("cmd", [["train", *CLS], ["detect", "train", *DET]], ids=["train", "detect-train"])
def test_a_folder_held_by_another_process_is_refused_naming_the_holder(cmd, tmp_path, cwd, capsys):
    held = tmp_path / "held"
    with RunFolderLock(held):  # as another botnet process would hold it
        rc, _, err = run(capsys, [*cmd, "--output", held])
        assert_one_line_error(rc, err, str(held), "in use by another botnet run", f"pid {os.getpid()}")
        assert list(held.iterdir()) == [held / LOCK_NAME]
    assert not held.exists() and list(cwd.iterdir()) == []


@needs_data
def test_resume_conflicts_are_one_line(old_run, tmp_path, cwd, capsys):
    before = _tree(old_run)
    other = tmp_path / "other"
    rc, _, err = run(capsys, ["train", "--resume", old_run, "--output", other])
    assert_one_line_error(rc, err, f"--resume {old_run}", str(other), "--init-weights")
    rc, _, err = run(capsys, ["train", "--resume", old_run / "last.safetensors", "--set", f"output.dir={other}"])
    assert_one_line_error(rc, err, str(other))
    for resume in (old_run, "auto"):
        rc, _, err = run(capsys, ["train", "--resume", resume, "--output", old_run, "--overwrite", "--max-steps", "2"])
        assert_one_line_error(rc, err, "--overwrite and --resume contradict")
    with RunFolderLock(old_run):
        rc, _, err = run(capsys, ["train", "--resume", old_run, "--max-steps", "2"])
        assert_one_line_error(rc, err, "in use", f"pid {os.getpid()}")
    assert _tree(old_run) == before and not other.exists() and list(cwd.iterdir()) == []


@needs_data
@pytest.mark.parametrize("cmd,target", [(["train"], "dir"), (["train"], "file"),
                                        (["demo", "--attention-images", "0"], "dir")])
def test_resume_writes_into_the_folder_of_the_checkpoint(cmd, target, old_run, tmp_path, cwd, capsys):
    """The checkpoint's config names old_run; the moved copy is resumed where it is, old_run stays as it was
    (and the demo does not fall back to its default folder runs/demo)."""
    moved = tmp_path / "moved"
    shutil.copytree(old_run, moved)
    before = _tree(old_run)
    resume = moved if target == "dir" else moved / "last.safetensors"
    rc, out, err = run(capsys, [*cmd, "--resume", resume, "--no-progress", "--max-steps", "3"])
    assert rc == 0, err
    assert f"run directory: {moved}" in out
    assert _tree(old_run) == before and list(cwd.iterdir()) == []
    steps = [json.loads(line)["step"] for line in open(moved / "metrics.jsonl")]
    assert json.loads((moved / "summary.json").read_text())["steps"] == 3 and max(steps) == 3
    assert json.loads((moved / "config.json").read_text())["output"]["dir"] == str(moved)
