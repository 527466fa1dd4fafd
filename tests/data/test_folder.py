"""ImageNet-layout folders: layout problems reported up front, images converted, bad files named."""
import numpy as np
import pytest
from PIL import Image

from botnet.data.errors import BadImageError, DataError
from botnet.data.folder import SafeImageFolder, check_image_folder, collate_skip_bad, pil_loader


def _img(path, mode="L", size=(20, 16)):
    arr = np.random.RandomState(abs(hash(str(path))) % 2**31).randint(0, 255, size[::-1] + ((len(mode),) if len(mode) > 1 else ()))
    Image.fromarray(arr.astype(np.uint8), mode).save(path)


def test_layout_problems_are_all_listed(tmp_path):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    (tmp_path / "train" / "dog").mkdir(parents=True)
    _img(tmp_path / "train" / "cat" / "a.png")
    with pytest.raises(DataError) as e:
        check_image_folder(tmp_path)
    msg = str(e.value)
    assert "empty class folder" in msg and "dog" in msg
    assert "missing split folder" in msg and "val" in msg


def test_val_classes_must_exist_in_train(tmp_path):
    for split, cls in (("train", "cat"), ("val", "cat"), ("val", "bird")):
        (tmp_path / split / cls).mkdir(parents=True, exist_ok=True)
        _img(tmp_path / split / cls / "x.png")
    with pytest.raises(DataError, match="bird"):
        check_image_folder(tmp_path)


def test_grayscale_rgba_palette_are_converted(tmp_path):
    _img(tmp_path / "g.png", "L")
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red -> white background
    rgba.save(tmp_path / "t.png")
    Image.new("P", (8, 8)).save(tmp_path / "p.png")
    assert pil_loader(str(tmp_path / "g.png"), "RGB").mode == "RGB"
    t = pil_loader(str(tmp_path / "t.png"), "RGB")
    assert t.mode == "RGB" and t.getpixel((0, 0)) == (255, 255, 255)
    assert pil_loader(str(tmp_path / "p.png"), "L").mode == "L"


def test_corrupt_file_is_named_or_skipped(tmp_path):
    d = tmp_path / "train" / "cat"
    d.mkdir(parents=True)
    _img(d / "ok.png", "RGB")
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff this is not a jpeg")
    ds = SafeImageFolder(tmp_path / "train")
    bad = [i for i, (p, _) in enumerate(ds.samples) if p.endswith("broken.jpg")][0]
    with pytest.raises(BadImageError, match="broken.jpg"):
        ds[bad]
    ds = SafeImageFolder(tmp_path / "train", skip_bad=True, transform=lambda im: np.asarray(im, dtype=np.float32))
    x, y, skipped = collate_skip_bad([ds[i] for i in range(len(ds))])
    assert x.shape[0] == 1 and len(skipped) == 1 and skipped[0].endswith("broken.jpg")
