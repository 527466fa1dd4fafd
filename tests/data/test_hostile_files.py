"""Hostile files for the data readers (issue 18): FIFOs where images are expected, symlink loops
in class folders, IDX files whose header or stream asks for more than they should, and PNGs whose
header is valid but whose pixel data is garbage (found only when decoded, mid-epoch)."""
import gzip
import json
import os
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from botnet.data.errors import BadImageError, DataError
from botnet.data.fashion_mnist import read_idx
from botnet.data.folder import check_image_folder, check_image_header, pil_loader
from helpers import image_folder, run as _run


def _error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _garbage_png(path: Path) -> None:
    """Signature, a valid 28x28 IHDR, an IDAT of garbage and IEND: passes the header scan."""
    ihdr = struct.pack(">IIBBBBB", 28, 28, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"\x13garbage" * 20)
                     + _chunk(b"IEND", b""))


@pytest.fixture
def folder(tmp_path):
    return image_folder(tmp_path / "data")


# ----------------------------------------------------------------------------- FIFOs
def test_a_fifo_named_png_is_never_opened_for_reading(tmp_path):
    fifo = tmp_path / "x.png"
    os.mkfifo(fifo)  # open(fifo, "rb") would block until a writer comes: forever
    assert "FIFO" in check_image_header(str(fifo))
    with pytest.raises(BadImageError, match="FIFO"):
        pil_loader(str(fifo))
    with pytest.raises(BadImageError, match="folder"):
        pil_loader(str(tmp_path))


# ----------------------------------------------------------------------------- symlink loops
def test_symlink_loops_in_a_class_folder_are_named(folder):
    a = folder / "train" / "a"
    (a / "sub").mkdir()
    (a / "loop1").symlink_to(a, target_is_directory=True)
    (a / "sub" / "loop2").symlink_to(a, target_is_directory=True)  # two loops: os.walk never ended
    with pytest.raises(DataError, match="symlink loop") as e:
        check_image_folder(folder)
    assert "\n" not in str(e.value) and (str(a / "loop1") in str(e.value) or str(a / "sub" / "loop2") in str(e.value))


def test_one_loop_is_an_error_not_41_copies(folder, tmp_path, capsys):
    a = folder / "train" / "a"
    (a / "again").symlink_to("..", target_is_directory=True)  # train/a/again -> train (holds a itself)
    rc, _, err = _run(capsys, ["train", "--dataset", "folder", "--data-dir", folder, "--output", tmp_path / "r"])
    assert rc == 2
    line = _error_line(err)
    assert "symlink loop" in line and str(a / "again") in line
    assert not (tmp_path / "r").exists()


def test_each_file_is_counted_once_through_two_links(folder, tmp_path):
    from botnet.data.folder import image_files

    shared = tmp_path / "shared"
    shared.mkdir()
    for i in range(3):
        Image.new("L", (8, 8)).save(shared / f"s{i}.png")
    b = folder / "train" / "b"
    (b / "x").symlink_to(shared, target_is_directory=True)
    (b / "y").symlink_to(shared, target_is_directory=True)
    (b / "dup.png").symlink_to(b / "0.png")
    assert len(image_files(b)) == 8 + 3
    assert check_image_folder(folder)["train"]["b"] == 8 + 3


# ----------------------------------------------------------------------------- IDX / gzip
def _idx_header(dims, dtype_code=0x08) -> bytes:
    return bytes([0, 0, dtype_code, len(dims)]) + struct.pack(">" + "I" * len(dims), *dims)


def test_idx_header_declaring_gigabytes_is_refused_before_unpacking(tmp_path):
    bomb = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(bomb, "wb") as f:  # 60000 x 10000 x 10000 bytes declared, 1 MB of zeros inside
        f.write(_idx_header((60000, 10000, 10000)) + bytes(1 << 20))
    with pytest.raises(DataError, match=r"declares .*6,000,000,000,000 bytes.*limit"):
        read_idx(bomb)


def test_idx_stream_longer_than_its_header_is_not_read_past_it(tmp_path):
    p = tmp_path / "labels.gz"
    with gzip.open(p, "wb") as f:  # declares 10 bytes, then unpacks to 10 MB
        f.write(_idx_header((10,)) + bytes(10 << 20))
    with pytest.raises(DataError, match="does not match its header"):
        read_idx(p)
    raw = tmp_path / "labels"
    raw.write_bytes(_idx_header((1000,)) + bytes(10))  # declares more than the file holds
    with pytest.raises(DataError, match="can hold"):
        read_idx(raw)
    with pytest.raises(DataError, match="limit"):
        read_idx(raw, max_bytes=100)
    ok = tmp_path / "ok.gz"
    with gzip.open(ok, "wb") as f:
        f.write(_idx_header((2, 3)) + bytes(range(6)))
    assert read_idx(ok).tolist() == [[0, 1, 2], [3, 4, 5]]


def test_train_on_an_idx_bomb_is_one_line(tmp_path, capsys):
    d = tmp_path / "fm"
    d.mkdir()
    for name, dims in (("train-images-idx3-ubyte", (60000, 10000, 10000)), ("train-labels-idx1-ubyte", (60000,)),
                       ("t10k-images-idx3-ubyte", (1, 28, 28)), ("t10k-labels-idx1-ubyte", (1,))):
        with gzip.open(d / f"{name}.gz", "wb") as f:
            f.write(_idx_header(dims) + bytes(1024))
    rc, _, err = _run(capsys, ["train", "--data-dir", d, "--output", tmp_path / "r", "--no-progress",
                               "--set", "model.kwargs={widths: [4, 8, 8, 16], stem_width: 8}"])
    assert rc == 2
    assert "train-images-idx3-ubyte.gz" in _error_line(err)


# ----------------------------------------------------------------------------- garbage pixel data
FOLDER = ["--dataset", "folder", "--img-size", "28", "--set", "model.in_chans=1", "--batch-size", "4",
          "--set", "model.kwargs={widths: [4, 8, 8, 16], stem_width: 8}", "--no-progress", "--no-plots",
          "--eval-every", "0", "--threads", "1", "--epochs", "1", "--num-workers", "1"]


def test_garbage_png_mid_epoch_is_named_or_skipped(folder, tmp_path, capsys):
    bad = folder / "train" / "a" / "garbage.png"
    _garbage_png(bad)
    assert check_image_header(str(bad)) is None  # the header scan cannot see it: only decoding can
    # with a worker process, the error crossed the process boundary as a RuntimeError with a traceback
    rc, _, err = _run(capsys, ["train", "--data-dir", folder, "--output", tmp_path / "r1", *FOLDER])
    assert rc == 2
    line = _error_line(err)
    assert str(bad) in line and "--skip-bad" in line
    rc, out, err = _run(capsys, ["train", "--data-dir", folder, "--output", tmp_path / "r2", "--skip-bad", *FOLDER])
    assert rc == 0 and "Traceback" not in err, err
    summary = json.loads((tmp_path / "r2" / "summary.json").read_text())
    assert summary["skipped_train_files"] == 1 and summary["skipped_train_examples"] == [str(bad)]


def test_bad_image_error_survives_the_worker_boundary():
    from torch.utils.data._utils import ExceptionWrapper

    try:
        raise BadImageError("/d/x.png", "OSError: broken data stream")
    except BadImageError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(BadImageError) as e:
        wrapped.reraise()
    assert e.value.path == "/d/x.png" and e.value.reason == "OSError: broken data stream"
