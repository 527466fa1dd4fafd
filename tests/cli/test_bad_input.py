"""Every command, a table of bad arguments: exit code 2, one line naming the culprit, no traceback,
nothing written. Plus the rows of the bad-input list that need more than an exit code."""
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import botnet
from botnet.data import fashion_mnist as fm
from botnet.engine import checkpoint as ckpt
from helpers import assert_one_line_error, image_folder, run, table_failures

HAVE_FMNIST = fm._complete(fm.SYSTEM_DIR) is not None
needs_data = pytest.mark.skipif(not HAVE_FMNIST, reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
TINY = ["--set", "model.kwargs={widths: [4, 8, 8, 16], stem_width: 8}", "--no-progress", "--no-plots",
        "--eval-every", "0", "--threads", "1", "--limit-train", "64", "--limit-val", "32", "--batch-size", "32"]
MINI_KW = {"widths": [4, 8, 8, 16], "stem_width": 8, "strides": [2, 2, 1, 1], "img_size": 28, "num_classes": 10,
           "in_chans": 1}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Bad files of every kind, and one good classification checkpoint of another architecture."""
    d = tmp_path_factory.mktemp("bad")
    f = {"dir": d}
    f["corrupt"] = d / "corrupt.safetensors"
    f["corrupt"].write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    f["text"] = d / "notes.txt"
    f["text"].write_text("hello\n")
    f["pth"] = d / "weights.pth"
    torch.save(botnet.create_model("botnet_mini", **MINI_KW).state_dict(), f["pth"])
    # weights of one architecture under the metadata of another (e.g. a renamed or mixed-up file)
    other = botnet.create_model("botnet_mini", **{**MINI_KW, "widths": [8, 8, 16, 16]})
    f["other_arch"] = ckpt.save_checkpoint(d / "other.safetensors", other, arch="botnet_mini", model_kwargs=MINI_KW,
                                           save_state=False)
    f["empty_dir"] = d / "empty-run"
    f["empty_dir"].mkdir()
    f["bad_json"] = d / "instances.json"
    f["bad_json"].write_text('{\n  "images": [],\n  "annotations": [,]\n}\n')
    f["img"] = d / "ok.png"
    Image.new("L", (28, 28)).save(f["img"])
    return f


def _table(f):
    missing, no_gpu = f["dir"] / "no-such", ("cuda" if not torch.cuda.is_available() else "cuda:99")
    corrupt, pth, txt = f["corrupt"], f["pth"], f["text"]
    return [
        # (args, words the one line must hold)
        (["train", "--epochs", "-1"], ["--epochs", "> 0"]),
        (["train", "--img-size", "0"], ["--img-size"]),
        (["train", "--batch-size", "x"], ["--batch-size", "not an integer"]),
        (["train", "--set", "data.img_size=0"], ["data.img_size"]),
        (["train", "--set", "train.epochs=-1"], ["train.epochs"]),
        (["train", "--device", no_gpu], ["cuda"]),
        (["train", "--output", txt], [str(txt), "is a file"]),
        (["train", "--output", txt / "sub"], [str(txt)]),
        (["train", "--resume", missing], [str(missing), "does not exist"]),
        (["train", "--resume", f["empty_dir"]], [str(f["empty_dir"]), "last.safetensors"]),
        (["train", "--resume", corrupt], [str(corrupt)]),
        (["train", "--set", "model.kwargs.no_such_arg=3"], ["no_such_arg", "valid"]),
        (["train", "--set", "optim.nope=1"], ["optim.nope", "known"]),
        (["train", "--set", "data.eval_tta=vflip"], ["data.eval_tta", "hflip"]),
        (["train", "--set", "optim.lr=[1,"], ["not valid YAML"]),
        (["train", "--config", "no-such-recipe"], ["no-such-recipe", "known recipes"]),
        (["train", "--model", "nonet"], ["nonet"]),
        (["train", "--data-dir", missing], [str(missing), "does not exist"]),
        (["train", "--init-weights", missing / "w.safetensors"], [str(missing / "w.safetensors")]),
        (["demo", "--epochs", "-1"], ["--epochs"]),
        (["demo", "--threads", "0"], ["--threads"]),
        (["eval", f["other_arch"], "--no-progress"], [str(f["other_arch"]), "does not match"]),
        (["eval", pth], [str(pth), "without the architecture"]),
        (["eval", corrupt], [str(corrupt), "cannot read checkpoint"]),
        (["eval", missing], [str(missing)]),
        (["eval", corrupt, "--batch-size", "0"], ["--batch-size"]),
        (["eval", corrupt, "--device", no_gpu], ["cuda"]),
        (["predict", f["img"], "--checkpoint", corrupt], [str(corrupt)]),
        (["predict", f["img"], "--checkpoint", pth], [str(pth)]),
        (["predict", f["img"], "--checkpoint", corrupt, "--topk", "0"], ["--topk"]),
        (["attention", f["img"], "--checkpoint", corrupt], [str(corrupt)]),
        (["export", "botnet_mini", "--format", "onnx", "--out", f["dir"] / "m.onnx", "--checkpoint", corrupt],
         [str(corrupt)]),
        (["export", "botnet_mini", "--format", "onnx", "--out", f["dir"] / "m.onnx", "--checkpoint", missing],
         [str(missing)]),
        (["export", "nonet", "--format", "onnx", "--out", f["dir"] / "m.onnx"], ["nonet"]),
        (["export", "botnet_mini", "--format", "onnx", "--out", f["dir"] / "m.onnx", "--img-size", "0"],
         ["--img-size"]),
        (["export", "botnet_mini", "--format", "gif", "--out", f["dir"] / "m.gif"], ["--format"]),
        (["detect", "train", "--set", "train.nope=1"], ["train.nope", "known"]),
        (["detect", "train", "--epochs", "0"], ["--epochs"]),
        (["detect", "train", "--device", no_gpu], ["cuda"]),
        (["detect", "train", "--set", "model.kwargs.zzz=1"], ["zzz"]),
        (["detect", "train", "--set", "model.kind=yolo"], ["model.kind"]),
        (["detect", "train", "--resume", missing], [str(missing)]),
        (["detect", "train", "--output", txt], [str(txt), "is a file"]),
        (["detect", "train", "--set", f"model.backbone_weights={missing}"], [str(missing)]),
        (["detect", "eval", corrupt], [str(corrupt)]),
        (["detect", "eval", missing], [str(missing)]),
        (["detect", "eval", f["other_arch"]], ["not a detection one"]),
        (["detect", "predict", corrupt, f["img"]], [str(corrupt)]),
        (["detect", "predict", corrupt, f["img"], "--score-threshold", "2"], ["--score-threshold"]),
        (["data", "check-coco", f["bad_json"]], [str(f["bad_json"]), "line 3"]),
        (["data", "check-coco", missing / "x.json"], [str(missing / "x.json")]),
        (["data", "fashion-mosaic", "--out", txt], [str(txt)]),
        (["models", "--img-size", "0"], ["--img-size"]),
        (["bench", "--repeats", "0", "--out", f["dir"] / "bench"], ["--repeats", ">= 1"]),
        (["bench", "--warmup", "-1", "--out", f["dir"] / "bench"], ["--warmup", ">= 0"]),
        (["bench", "--attn-sizes", "64:0", "--out", f["dir"] / "bench"], ["--attn-sizes", "64:0"]),
        (["bench", "--attn-impl", "fastest", "--out", f["dir"] / "bench"], ["--attn-impl", "fastest"]),
        (["bench", "--device", no_gpu, "--out", f["dir"] / "bench"], ["cuda"]),
        (["nosuchcommand"], ["nosuchcommand"]),
    ]


def test_every_command_refuses_bad_arguments_in_one_line(files, capsys):
    before = sorted(p.name for p in files["dir"].iterdir())
    assert table_failures(capsys, _table(files)) == []
    # nothing was written or half-written next to the bad files
    assert sorted(p.name for p in files["dir"].iterdir()) == before
    assert files["text"].read_text() == "hello\n"


def test_read_only_output_folder_is_refused_before_training(tmp_path, capsys):
    ro = Path("/sys/kernel")  # a folder even root cannot write into
    if not ro.is_dir():
        pytest.skip("no /sys/kernel on this system")
    rc, _, err = run(capsys, ["train", "--output", ro / "botnet-run", *TINY])
    assert_one_line_error(rc, err, "not writable")


# ----------------------------------------------------------------------------- image folders
def _png_header_only(path: Path, width: int, height: int) -> None:
    """A valid PNG signature + IHDR claiming width x height + IEND (no pixel data)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


@pytest.fixture
def folder(tmp_path):
    """ROOT/{train,val}/{a,b}/*.png with 8 good 28x28 images per class."""
    return image_folder(tmp_path / "data")


FOLDER = ["--dataset", "folder", "--img-size", "28", "--set", "model.in_chans=1", "--batch-size", "4",
          "--set", "model.kwargs={widths: [4, 8, 8, 16], stem_width: 8}", "--no-progress", "--no-plots",
          "--eval-every", "0", "--threads", "1", "--max-steps", "2"]


def test_decompression_bomb_is_named_and_refused_or_skipped(folder, tmp_path, capsys):
    bomb = folder / "train" / "a" / "bomb.png"
    _png_header_only(bomb, 100000, 100000)
    rc, _, err = run(capsys, ["train", "--data-dir", folder, "--output", tmp_path / "r1", *FOLDER])
    assert_one_line_error(rc, err, str(bomb), "decompression bomb")
    assert not (tmp_path / "r1").exists()
    rc, out, err = run(capsys, ["train", "--data-dir", folder, "--output", tmp_path / "r2", "--skip-bad", *FOLDER])
    assert rc == 0 and "Traceback" not in err, err
    summary = json.loads((tmp_path / "r2" / "summary.json").read_text())
    assert summary["skipped_train_files"] == 1 and str(bomb) in summary["skipped_train_examples"]


def test_broken_files_are_all_found_before_training(folder, tmp_path, capsys):
    (folder / "train" / "a" / "empty.png").write_bytes(b"")
    (folder / "train" / "b" / "text.png").write_text("not an image")
    good = (folder / "train" / "a" / "0.png").read_bytes()
    (folder / "val" / "b" / "cut.png").write_bytes(good[: len(good) // 2])
    rc, _, err = run(capsys, ["train", "--data-dir", folder, "--output", tmp_path / "r", *FOLDER])
    assert_one_line_error(rc, err, "empty.png", "text.png", "3 unreadable")  # all of the train split at once
    assert not (tmp_path / "r").exists()
    from botnet.data.folder import check_image_header

    assert "truncated PNG" in check_image_header(str(folder / "val" / "b" / "cut.png"))
    assert check_image_header(str(folder / "val" / "b" / "0.png")) is None


def test_16_bit_grayscale_keeps_its_range(tmp_path):
    from botnet.data.folder import pil_loader

    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"  # the case that used to clip to white
    out = np.asarray(pil_loader(str(tmp_path / "g16.png"), "L"))
    assert out.tolist() == [[0, 1, 128, 255]]


# ----------------------------------------------------------------------------- run directories
@needs_data
def test_epochs_minus_one_writes_nothing(tmp_path, capsys):
    rc, _, err = run(capsys, ["train", "--epochs", "-1", "--output", tmp_path / "r", *TINY])
    assert_one_line_error(rc, err)
    assert not (tmp_path / "r").exists()


@needs_data
def test_truncated_state_file_is_named(tmp_path, capsys):
    r = tmp_path / "r"
    assert run(capsys, ["train", "--epochs", "2", "--max-steps", "1", "--output", r, *TINY])[0] == 0
    state = r / "last.state.safetensors"
    state.write_bytes(state.read_bytes()[:-100])
    rc, _, err = run(capsys, ["train", "--resume", r, *TINY])
    assert_one_line_error(rc, err, str(state), "truncated")


@needs_data
def test_finished_run_is_left_untouched_and_stale_temp_files_are_removed(tmp_path, capsys):
    r = tmp_path / "r"
    assert run(capsys, ["train", "--epochs", "1", "--output", r, *TINY])[0] == 0
    snapshot = {p.name: p.read_bytes() for p in r.iterdir() if p.is_file()}
    rc, out, err = run(capsys, ["train", "--resume", r, "--no-progress"])
    assert rc == 0 and "already finished" in out, (out, err)
    assert {p.name: p.read_bytes() for p in r.iterdir() if p.is_file()} == snapshot

    # a save killed between write and rename leaves its temporary file (same name pattern as atomic_write)
    import tempfile

    fd, stale = tempfile.mkstemp(prefix=".last.safetensors.", suffix=".tmp", dir=r)
    os.close(fd)
    mine = r / ".my-notes.tmp"  # not ours: must survive
    mine.write_text("keep")
    rc, out, _ = run(capsys, ["train", "--epochs", "2", "--max-steps", "1", "--output", r, "--overwrite", *TINY])
    assert rc == 0 and not Path(stale).exists() and mine.exists()
    assert "left by a save that was killed" in out
