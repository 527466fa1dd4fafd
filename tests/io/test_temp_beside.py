"""What a killed export, publish or shards command leaves beside its output: the next command on the
same output removes it once its process is gone, never while it runs, and never anything else."""
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from botnet.data.shards import read_index
from botnet.export import read_export_marker
from botnet.io import atomic
from botnet.io.temp_beside import TempBeside, remove_abandoned
from helpers import abandoned_temp, hold_temp, run

@pytest.mark.parametrize("kind, suffix", [("file", ".tmp.onnx"), ("folder", ".tmp")])
def test_a_killed_writers_temporary_is_removed_and_a_running_ones_kept(tmp_path, kind, suffix):
    dest = tmp_path / ("model.onnx" if kind == "file" else "shards")
    proc, tmp = hold_temp(dest, kind, suffix)
    try:
        assert tmp.parent == tmp_path and tmp.name.startswith(f".{dest.name}.") and tmp.name.endswith(suffix)
        remove = shutil.rmtree if kind == "folder" else os.unlink
        assert remove_abandoned(dest, remove, suffix=suffix) == [] and tmp.exists()  # its writer still runs
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert remove_abandoned(dest, remove, suffix=suffix) == [tmp] and not tmp.exists()


def test_only_the_temporaries_of_that_output_are_taken(tmp_path):
    dest = tmp_path / "model.onnx"
    tmp = abandoned_temp(dest, "file", ".tmp.onnx")
    others = [tmp_path / n for n in (".model.onnx.abc.tmp.onnx",  # not the 8 random characters
                                     ".model.onnx.abcdefgh.tmp",  # another suffix (a checkpoint's, say)
                                     ".other.onnx.abcdefgh.tmp.onnx",  # another output
                                     "model.onnx.abcdefgh.tmp.onnx")]  # not hidden: not a name botnet makes
    for p in others:
        p.write_text("mine\n")
    target = tmp_path / "target.bin"
    target.write_text("linked\n")
    link = tmp_path / ".model.onnx.zzzzzzzz.tmp.onnx"
    link.symlink_to(target)  # the right name, but a link: never followed or removed
    assert remove_abandoned(dest, os.unlink, suffix=".tmp.onnx") == [tmp]
    assert all(p.read_text() == "mine\n" for p in others) and link.is_symlink() and target.exists()


def test_a_new_writer_never_takes_a_temporary_another_holds(tmp_path):
    dest = tmp_path / "out"
    with TempBeside(dest) as a, TempBeside(dest) as b:
        assert a.path != b.path and a.path.exists() and b.path.exists()
        assert remove_abandoned(dest, os.unlink) == []  # both held (by this process's own claims)
    assert sorted(remove_abandoned(dest, os.unlink)) == sorted([a.path, b.path])


def _cli(args, **env):
    full = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **env}
    return subprocess.run([sys.executable, "-m", "botnet.cli", *map(str, args)], capture_output=True, text=True,
                          env=full, timeout=600)


def test_export_killed_before_its_rename_leaves_the_old_file_and_the_next_export_clears_up(tmp_path, capsys):
    out = tmp_path / "mini.ts"
    args = ["export", "botnet_mini", "--format", "torchscript", "--out", out, "--no-verify", "--num-classes", "3",
            "--in-chans", "1", "--img-size", "28"]
    assert run(capsys, args)[0] == 0
    first = out.read_bytes()
    killed = _cli([*args, "--overwrite"], **{atomic.FAULT_ENV: "export.fsync"})  # the real command, killed
    assert killed.returncode == -signal.SIGKILL
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".mini.ts.")]
    assert len(left) == 1 and left[0].stat().st_size > 0  # the whole new file, under its temporary name
    assert out.read_bytes() == first  # the last good export, untouched
    rc, _, err = run(capsys, [*args, "--overwrite"])
    assert rc == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mini.ts"]
    assert read_export_marker(out)["format"] == "torchscript"


def test_shards_killed_before_the_swap_are_cleared_by_the_next_run(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / "src" / split / c).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / "src" / split / c / f"{i}.png")
    (tmp_path / "data").mkdir()
    notes = tmp_path / "data" / "notes.txt"
    notes.write_text("mine\n")
    args = ["data", "shards", tmp_path / "src", tmp_path / "data" / "shards"]
    killed = _cli(args, **{atomic.FAULT_ENV: "shards.swap"})
    assert killed.returncode == -signal.SIGKILL
    (left,) = [p for p in (tmp_path / "data").iterdir() if p.name.startswith(".shards.")]
    assert any(p.suffix == ".tar" for p in left.iterdir())
    (left / "mine.txt").write_text("a file botnet did not write\n")
    done = _cli(args)
    assert done.returncode == 0, done.stderr
    # the shards it wrote are gone from the leftover; the file it did not write stays, and is named
    assert sorted(p.name for p in left.iterdir()) == ["mine.txt"]
    assert f"left {left}: it holds files botnet did not write" in done.stderr
    assert sum(read_index(tmp_path / "data" / "shards", ("train", "val")).splits["train"][1]) == 6
    assert notes.read_text() == "mine\n"


def test_an_export_never_replaces_a_file_that_appeared_while_it_ran(tmp_path):
    from botnet.errors import ConfigError
    from botnet.export import _write_atomic

    out = tmp_path / "m.onnx"

    def write(tmp):  # the export's own file, while someone puts theirs at --out
        Path(tmp).write_bytes(b"new export")
        out.write_text("mine\n")

    with pytest.raises(ConfigError, match="changed while exporting"):
        _write_atomic(out, write)
    assert out.read_text() == "mine\n" and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
