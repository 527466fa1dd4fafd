"""Fashion-MNIST IDX reader against known facts of the data set, and the 'not installed' message."""
import gzip
import struct

import numpy as np
import pytest

from botnet.data import fashion_mnist as fm
from botnet.data.errors import DataError, DatasetNotFoundError

HAVE_FMNIST = fm._complete(fm.SYSTEM_DIR) is not None
needs_data = pytest.mark.skipif(not HAVE_FMNIST, reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


def _write_idx(path, array, magic_type=0x08):
    header = struct.pack(">BBBB", 0, 0, magic_type, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@needs_data
def test_known_facts_of_the_training_and_test_splits():
    x, y = fm.load_fashion_mnist("train")
    assert x.shape == (60000, 28, 28) and x.dtype == np.uint8
    assert y.shape == (60000,)
    assert np.bincount(y).tolist() == [6000] * 10
    xt, yt = fm.load_fashion_mnist("test")
    assert xt.shape == (10000, 28, 28)
    assert np.bincount(yt).tolist() == [1000] * 10
    # published first labels: train[0] is an ankle boot, test starts ankle boot, pullover, trouser
    assert y[0] == 9 and yt[:3].tolist() == [9, 2, 1]
    assert 0.27 < x.mean() / 255 < 0.30  # the data set's well-known mean 0.286


def test_reader_round_trip_and_corrupt_files(tmp_path):
    a = (np.arange(2 * 3 * 4) % 256).reshape(2, 3, 4).astype(np.uint8)
    _write_idx(tmp_path / "a.gz", a)
    assert np.array_equal(fm.read_idx(tmp_path / "a.gz"), a)
    raw = gzip.open(tmp_path / "a.gz").read()
    with gzip.open(tmp_path / "trunc.gz", "wb") as f:
        f.write(raw[:-5])
    with pytest.raises(DataError, match="truncated"):
        fm.read_idx(tmp_path / "trunc.gz")
    (tmp_path / "junk").write_bytes(b"\x12\x34\x56\x78")
    with pytest.raises(DataError, match="not an IDX file"):
        fm.read_idx(tmp_path / "junk")


def test_reads_a_torchvision_style_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(fm, "SYSTEM_DIR", tmp_path / "nowhere")
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    imgs = np.random.RandomState(0).randint(0, 255, (20, 28, 28))
    labels = np.arange(20) % 10
    for split, (im, lb) in fm.FILES.items():
        _write_idx(raw / f"{im}.gz", imgs)
        _write_idx(raw / f"{lb}.gz", labels)
    x, y = fm.load_fashion_mnist("train", data_dir=tmp_path)
    assert x.shape == (20, 28, 28) and y.tolist() == labels.tolist()


def test_missing_data_gives_install_instructions(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fm, "SYSTEM_DIR", tmp_path / "nowhere")
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fm.load_fashion_mnist("train")
    from botnet.cli import main

    rc = main(["train", "--output", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "apt-get install dataset-fashion-mnist" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "last.safetensors").exists()


def test_named_data_dir_is_used_or_refused_never_replaced_by_the_system_copy(tmp_path, capsys):
    # the system copy exists on this machine (the default data); a --data-dir the user names must win or fail
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        fm.load_fashion_mnist("train", data_dir=tmp_path / "no-such-folder")
    with pytest.raises(DatasetNotFoundError, match="does not hold the four Fashion-MNIST IDX files"):
        fm.load_fashion_mnist("train", data_dir=tmp_path)  # exists, but empty
    from botnet.cli import main

    rc = main(["train", "--data-dir", str(tmp_path / "no-such-folder"), "--output", str(tmp_path / "run"),
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "no-such-folder does not exist" in err and len(err.strip().splitlines()) == 1
