import json
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from botnet.data.coco import CocoDetection, CocoFormatError, ann_to_mask, load_coco, validate_coco
from botnet.data.mosaic import FASHION_CLASSES, generate_fashion_mosaic, mosaic_paths

needs_fmnist = pytest.mark.skipif(
    not os.path.isfile("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
    and not os.environ.get("BOTNET_FASHION_MNIST"), reason="Fashion-MNIST IDX files not installed")

SMALL = dict(num_train=6, num_val=3, canvas=96, min_items=2, max_items=4, min_item_size=24, max_item_size=48, seed=3)


@needs_fmnist
def test_mosaic_is_deterministic_and_masks_lie_in_boxes(tmp_path):
    a = generate_fashion_mosaic(tmp_path / "a", **SMALL)
    b = generate_fashion_mosaic(tmp_path / "b", **SMALL)
    assert not a["reused"] and a["train"]["annotations"] > 0
    for split in ("train", "val"):
        ia, ja = mosaic_paths(tmp_path / "a", split)
        ib, jb = mosaic_paths(tmp_path / "b", split)
        da, db = json.load(open(ja)), json.load(open(jb))
        assert da["images"] == db["images"] and da["annotations"] == db["annotations"]
        assert [c["name"] for c in da["categories"]] == FASHION_CLASSES
        for im in da["images"]:
            pa = np.asarray(Image.open(os.path.join(ia, im["file_name"])))
            pb = np.asarray(Image.open(os.path.join(ib, im["file_name"])))
            assert pa.shape == (96, 96, 3) and np.array_equal(pa, pb)
        for ann in da["annotations"]:
            m = ann_to_mask(ann, 96, 96)
            x, y, w, h = ann["bbox"]
            assert m.sum() == ann["area"] > 0
            assert m[:, :x].sum() == 0 and m[:, x + w :].sum() == 0 and m[:y].sum() == 0 and m[y + h :].sum() == 0
            ys, xs = np.nonzero(m)  # the box is the tight box of the mask
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h)
    # a different seed gives a different set; a larger set starts with the same images
    c = generate_fashion_mosaic(tmp_path / "c", **{**SMALL, "seed": 4})
    assert json.load(open(mosaic_paths(tmp_path / "c", "train")[1]))["annotations"] != \
        json.load(open(mosaic_paths(tmp_path / "a", "train")[1]))["annotations"]
    generate_fashion_mosaic(tmp_path / "d", **{**SMALL, "num_train": 8})
    img0 = lambda d: np.asarray(Image.open(os.path.join(mosaic_paths(d, "train")[0], "000000.png")))  # noqa: E731
    assert np.array_equal(img0(tmp_path / "a"), img0(tmp_path / "d"))
    assert generate_fashion_mosaic(tmp_path / "a", **SMALL)["reused"]


def _write_images(folder, names, size=(60, 40)):
    os.makedirs(folder, exist_ok=True)
    for n in names:
        Image.fromarray(np.full((size[1], size[0], 3), 128, dtype=np.uint8)).save(os.path.join(folder, n))


def _good_ann(i, image_id=1, bbox=(5, 5, 20, 10), **kw):
    x, y, w, h = bbox
    a = {"id": i, "image_id": image_id, "category_id": 3, "bbox": list(bbox), "area": w * h, "iscrowd": 0,
         "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]}
    a.update(kw)
    return a


def _bad_file(tmp_path):
    _write_images(tmp_path / "img", ["a.png", "b.png", "empty.png"])
    images = [
        {"id": 1, "file_name": "a.png", "width": 60, "height": 40},
        {"id": 2, "file_name": "b.png", "width": 60, "height": 40},
        {"id": 3, "file_name": "missing.png", "width": 60, "height": 40},  # missing file
        {"id": 4, "file_name": "x.png"},  # missing width/height
        {"id": 5, "file_name": "empty.png", "width": 60, "height": 40},  # no annotations: kept
    ]
    anns = [
        _good_ann(1),
        _good_ann(2, image_id=2, bbox=(50, 30, 20, 20)),  # partly outside: clipped, kept
        {"id": 3, "image_id": 1, "bbox": [1, 1, 5, 5]},  # no category_id
        _good_ann(4, category_id=42),  # unknown category
        _good_ann(5, bbox=(100, 100, 5, 5)),  # entirely outside
        _good_ann(6, bbox=(5, 5, 0, 10)),  # zero area
        _good_ann(7, segmentation=[[1, 1, 2, 2]]),  # degenerate polygon (2 points)
        _good_ann(8, segmentation=[[1, 1, 5, 5, 9, 9]]),  # degenerate polygon (collinear, zero area)
        _good_ann(9, image_id=3),  # image file missing
        _good_ann(10, image_id=77),  # unknown image
        _good_ann(11, bbox=(1, 1, float("nan"), 3)),  # non-finite box
        _good_ann(12, segmentation={"size": [10, 10], "counts": "abc"}),  # RLE of the wrong size
        _good_ann(13, bbox=(10, 10, 30, 20), iscrowd=1),  # crowd: kept for eval, not a training target
        _good_ann(14, segmentation=[[1, 1, 2, 2], [5, 5, 25, 5, 25, 15, 5, 15]]),  # one bad polygon of two
    ]
    cats = [{"id": 3, "name": "thing"}, {"id": 9, "name": "other"}]
    return {"images": images, "annotations": anns, "categories": cats}


def test_validation_pass_counts_every_problem(tmp_path):
    data = _bad_file(tmp_path)
    cleaned, rep = validate_coco(data, tmp_path / "img", require_masks=True)
    assert rep.counts == {
        "image_file_missing": 1, "image_missing_fields": 1, "ann_missing_fields": 1, "ann_unknown_category": 1,
        "ann_box_outside": 1, "ann_zero_area": 1, "ann_degenerate_polygon": 2, "ann_unknown_image": 2,
        "ann_bad_bbox": 1, "ann_bad_rle": 1, "ann_box_clipped": 1, "polygon_dropped": 1,
    }
    assert sorted(a["id"] for a in cleaned["annotations"]) == [1, 2, 13, 14]
    assert [a["bbox"] for a in cleaned["annotations"] if a["id"] == 2] == [[50.0, 30.0, 10.0, 10.0]]
    assert sorted(i["id"] for i in cleaned["images"]) == [1, 2, 5]
    assert rep.num_errors == 12  # dropped records; clipping and removing one polygon of two are not errors
    s = rep.summary()
    assert "2 x annotations whose polygons are all degenerate" in s and "kept 3/5 images, 4/14 annotations" in s


def test_bad_records_warn_with_counts_or_raise_when_strict(tmp_path):
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(_bad_file(tmp_path)))
    with pytest.warns(UserWarning, match=r"1 x image files not found"):
        ds = CocoDetection(tmp_path / "img", path, with_masks=True)
    assert len(ds) == 3  # the image without annotations is kept
    for i in range(len(ds)):  # no bad record reaches __getitem__
        img, t = ds[i]
        assert img.dtype == torch.uint8 and img.shape == (3, 40, 60)
        assert t["boxes"].shape[0] == t["labels"].shape[0] == t["masks"].shape[0]
    targets = {ds.ids[i]: ds[i][1] for i in range(len(ds))}
    assert len(targets[1]["boxes"]) == 2  # crowd annotation 13 excluded from the training target
    assert len(targets[5]["boxes"]) == 0 and targets[5]["masks"].shape == (0, 40, 60)
    assert ds.num_classes == 2 and ds.label_to_cat_id == {1: 3, 2: 9}
    assert set(targets[1]["labels"].tolist()) == {1}
    # the crowd annotation stays in the evaluation ground truth
    assert any(a["iscrowd"] for a in ds.coco.dataset["annotations"])
    with pytest.raises(CocoFormatError, match="image files not found"):
        CocoDetection(tmp_path / "img", path, with_masks=True, strict=True)
    ds2 = CocoDetection(tmp_path / "img", path, with_masks=True, remove_empty=True, quiet=True)
    assert len(ds2) == 2


def test_fatal_problems_raise_clear_errors(tmp_path):
    with pytest.raises(CocoFormatError, match="lacks the top-level key"):
        validate_coco({"images": []})
    with pytest.raises(CocoFormatError, match="category record without id/name"):
        validate_coco({"images": [], "annotations": [], "categories": [{"id": 1}]})
    with pytest.raises(CocoFormatError, match="not found"):
        load_coco(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CocoFormatError, match="not valid JSON"):
        load_coco(tmp_path / "bad.json")
    data = {"images": [{"id": 1, "file_name": "gone.png", "width": 5, "height": 5}], "annotations": [],
            "categories": [{"id": 1, "name": "a"}]}
    with pytest.raises(CocoFormatError, match="no usable images"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load_coco(data, tmp_path)


def test_polygon_masks_decode(tmp_path):
    _write_images(tmp_path / "img", ["a.png"])
    data = {"images": [{"id": 1, "file_name": "a.png", "width": 60, "height": 40}],
            "annotations": [_good_ann(1, bbox=(10, 10, 20, 10))], "categories": [{"id": 3, "name": "t"}]}
    ds = CocoDetection(tmp_path / "img", data)
    _, t = ds[0]
    m = t["masks"][0]
    assert m[12:18, 12:28].all() and m[:8].sum() == 0 and m[:, 32:].sum() == 0
    assert t["boxes"].tolist() == [[10.0, 10.0, 30.0, 20.0]]


@pytest.mark.parametrize("scale_range", [(0.8, 1.25), (0.1, 2.0)])
def test_train_transforms_crop_or_pad_to_canvas(tmp_path, scale_range):
    from torchvision import tv_tensors

    from botnet.detection.transforms import build_transforms

    torch.manual_seed(0)
    tf = build_transforms(True, canvas=64, scale_range=scale_range)
    img = tv_tensors.Image(torch.randint(0, 255, (3, 50, 90), dtype=torch.uint8))
    masks = torch.zeros(2, 50, 90, dtype=torch.uint8)
    masks[0, 10:30, 10:40] = 1
    masks[1, 20:45, 60:85] = 1
    target = {"boxes": tv_tensors.BoundingBoxes([[10, 10, 40, 30], [60, 20, 85, 45]], format="XYXY", canvas_size=(50, 90)),
              "labels": torch.tensor([1, 2]), "masks": tv_tensors.Mask(masks), "image_id": 1, "area": torch.ones(2)}
    for _ in range(10):
        out, t = tf(img, target)
        assert out.shape == (3, 64, 64) and out.dtype == torch.float32
        n = len(t["boxes"])
        assert t["labels"].shape == (n,) and t["masks"].shape == (n, 64, 64)
        assert "area" not in t
        for b, m in zip(t["boxes"], t["masks"]):  # boxes follow their masks through flip/scale/crop
            assert b[2] > b[0] and b[3] > b[1]
            ys, xs = torch.nonzero(m, as_tuple=True)
            if len(xs):
                assert xs.min() >= b[0] - 2 and xs.max() <= b[2] + 1 and ys.min() >= b[1] - 2 and ys.max() <= b[3] + 1
    ev = build_transforms(False)
    out, t = ev(img, target)
    assert out.shape == (3, 50, 90) and torch.equal(t["boxes"], target["boxes"])


def test_unreadable_and_truncated_image_files(tmp_path):
    _write_images(tmp_path / "img", ["a.png", "b.png", "c.png"])
    (tmp_path / "img" / "junk.png").write_text("not an image")
    raw = (tmp_path / "img" / "b.png").read_bytes()
    (tmp_path / "img" / "b.png").write_bytes(raw[: len(raw) // 2])  # header fine, data truncated
    images = [{"id": i + 1, "file_name": n, "width": 60, "height": 40}
              for i, n in enumerate(["a.png", "b.png", "c.png", "junk.png"])]
    images.append({"id": 9, "file_name": "c.png", "width": 50, "height": 40})  # size disagrees with the file
    data = {"images": images, "annotations": [_good_ann(1, image_id=2)], "categories": [{"id": 3, "name": "t"}]}
    with pytest.warns(UserWarning) as rec:
        ds = CocoDetection(tmp_path / "img", data)
    msg = str(rec[0].message)
    assert "1 x image files that are not readable images" in msg and "1 x image files whose size differs" in msg
    assert ds.ids == [1, 2, 3]
    with pytest.warns(UserWarning, match="cannot decode .*b.png"):
        img, t = ds[1]  # the truncated file is replaced by the next image, not a crash
    assert t["image_id"] == 3 and img.shape == (3, 40, 60)
    assert ds.bad_ids == {2}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ds[1][1]["image_id"] == 3  # already known bad: skipped silently
