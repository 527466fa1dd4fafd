"""COCO files made to hurt: deep nesting, fields of the wrong type, coordinates far outside the image
(which made pycocotools' rasteriser crash or run away), RLE runs longer than the image, and far too
many annotations. Each is refused by the validation pass, before any work, with the field named."""
import json
import warnings

import numpy as np
import pytest
from PIL import Image

from botnet.data import coco
from botnet.data.coco import CocoDetection, CocoFormatError, load_coco, read_json_file, validate_coco

from helpers import assert_one_line_error, run

W, H = 60, 40


def _base(seg=None, **ann):
    a = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 10], "area": 200, "iscrowd": 0,
         "segmentation": seg if seg is not None else [[5, 5, 25, 5, 25, 15, 5, 15]]}
    a.update(ann)
    return {"images": [{"id": 1, "file_name": "a.png", "width": W, "height": H}], "annotations": [a],
            "categories": [{"id": 1, "name": "thing"}]}


@pytest.fixture
def img(tmp_path):
    d = tmp_path / "img"
    d.mkdir()
    Image.fromarray(np.full((H, W, 3), 128, np.uint8)).save(d / "a.png")
    return d


def _write(tmp_path, data, name="ann.json"):
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else json.dumps(data))
    return p


def test_deeply_nested_json_is_one_line(tmp_path, img, capsys):
    p = _write(tmp_path, '{"images": [], "annotations": ' + "[" * 100000 + "]" * 100000 + ', "categories": []}')
    with pytest.raises(CocoFormatError, match="nested 100001 levels deep"):
        read_json_file(p)
    rc, _, err = run(capsys, ["data", "check-coco", p, "--images", img])
    assert_one_line_error(rc, err, str(p), "nested 100001 levels deep")


def test_category_of_the_wrong_type_is_a_file_error(tmp_path, img, capsys):
    d = _base()
    d["categories"][0]["id"] = [1]
    p = _write(tmp_path, d)
    rc, _, err = run(capsys, ["data", "check-coco", p, "--images", img])
    assert_one_line_error(rc, err, str(p), "categories[0].id is [1]; expected an integer")


def _with(change):
    d = _base()
    change(d)
    return d


@pytest.mark.parametrize("change, problem, example", [
    (lambda d: (d["images"][0].update(id=[1]), d["annotations"][0].update(image_id=[1])), "image_bad_field",
     "images[0].id is [1]; expected an integer"),
    (lambda d: d["images"][0].update(file_name=7), "image_bad_field", "images[0].file_name is 7"),
    (lambda d: d["annotations"][0].update(category_id=[1]), "ann_bad_field", "annotations[0].category_id is [1]"),
    (lambda d: d["annotations"][0].update(id={"a": 1}), "ann_bad_field", "annotations[0].id is {'a': 1}"),
    (lambda d: d["annotations"][0].update(iscrowd="yes"), "ann_bad_field", "annotations[0].iscrowd is 'yes'"),
    (lambda d: d["annotations"][0].update(segmentation={"size": ["a", "b"], "counts": "xx"}), "ann_bad_rle",
     "size ['a', 'b'] is not [height, width]"),
    (lambda d: d["annotations"][0].update(segmentation={"size": [H, W], "counts": [0, 5000]}), "ann_bad_rle",
     f"its runs cover 5000 pixels, the {H}x{W} image {H * W}"),
    (lambda d: d["annotations"][0].update(segmentation={"size": [H, W], "counts": "0P"}), "ann_bad_rle",
     "not a valid compressed RLE string"),
    (lambda d: d["annotations"][0].update(segmentation=[[5, 5, 1e9, 5, 25, 15, 5, 15]]), "ann_polygon_outside",
     "a point beyond 0.5 x the 60x40 image"),
    (lambda d: d["annotations"][0].update(segmentation=[list(np.tile([5, 5, 25, 5, 25, 15], 4000).tolist())]),
     "ann_too_many_points", "12000 points"),
    (lambda d: d["images"][0].update(width=100000), "image_too_large", "100000x40"),
])
def test_wrong_types_and_out_of_bounds_records_are_dropped_and_named(tmp_path, img, capsys, change, problem, example):
    d = _with(change)
    _, rep = validate_coco(d, img, require_masks=True)
    assert rep.counts[problem] == 1 and example in rep.examples[problem][0], rep.examples
    assert rep.num_annotations == 0
    p = _write(tmp_path, d)
    rc, out, err = run(capsys, ["data", "check-coco", p, "--images", img, "--masks"])
    assert example in out, out  # the report, with the example; then one error line, exit 2
    assert_one_line_error(rc, err, str(p), f"1 x {coco.PROBLEMS[problem]}")
    with pytest.raises(CocoFormatError) as e:  # strict: one line naming the file and the problem
        load_coco(p, img, require_masks=True, strict=True)
    assert str(p) in str(e.value) and example in str(e.value) and "\n" not in str(e.value)


def test_valid_rle_and_polygons_near_the_border_are_kept(img):
    from pycocotools import mask as mask_utils

    m = np.zeros((H, W), np.uint8, order="F")
    m[5:15, 5:25] = 1
    rle = mask_utils.encode(m)
    rle["counts"] = rle["counts"].decode("ascii")
    d = _base()
    d["annotations"] += [
        {**d["annotations"][0], "id": 2, "segmentation": rle},
        {**d["annotations"][0], "id": 3, "segmentation": {"size": [H, W], "counts": [105, 10, H * W - 115]}},
        {**d["annotations"][0], "id": 4, "segmentation": [[-5, -5, W + 10, -5, W + 10, H + 10]]},  # within margin
    ]
    runs = coco._rle_string_counts(rle["counts"])  # our reading of pycocotools' compressed format
    assert sum(runs) == H * W and sum(runs[1::2]) == 200 == int(mask_utils.area(rle))
    _, rep = validate_coco(d, img, require_masks=True)
    assert rep.num_errors == 0 and rep.num_annotations == 4, rep.summary()
    ds = CocoDetection(img, d)
    _, t = ds[0]
    assert t["masks"].shape == (4, H, W) and int(t["masks"][1].sum()) == 200 and int(t["masks"][2].sum()) == 10


def test_far_away_polygon_never_reaches_the_rasteriser(img):
    d = _base(seg=[[5, 5, 1e9, 5, 25, 15, 5, 15]])
    d["annotations"].append({**_base()["annotations"][0], "id": 2})
    with pytest.warns(UserWarning, match="1 x annotations with polygon points far outside the image"):
        ds = CocoDetection(img, d)
    _, t = ds[0]  # before: pycocotools crashed (SIGSEGV) or never returned here
    assert t["masks"].shape == (1, H, W)


def test_far_away_polygon_is_refused_by_detect_train_and_eval(tmp_path, img, capsys):
    import torch

    from botnet.detection.models import build_detector
    from botnet.engine.checkpoint import save_checkpoint

    p = _write(tmp_path, _base(seg=[[5, 5, 1e9, 5, 25, 15, 5, 15]]))
    rc, _, err = run(capsys, ["detect", "train", "--output", tmp_path / "run", "--no-progress",
                              "--set", "data.dataset=coco", "--set", f"data.root={tmp_path}", "--set",
                              "data.train_images=img", "--set", "data.train_ann=ann.json", "--set", "data.strict=true"])
    assert_one_line_error(rc, err, str(p), "polygon points far outside the image", "annotation 1")
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").glob("*.safetensors"))

    torch.manual_seed(0)
    model = build_detector("maskrcnn", "botnet50", num_classes=2, canvas=64, fpn_channels=16, box_head_dim=16,
                           mask_head_layers=(8,), backbone_kwargs={"layers": (1, 1, 1, 3), "widths": (8, 8, 8, 8),
                                                                   "stem_width": 8})
    ck = save_checkpoint(tmp_path / "det.safetensors", model, save_state=False, task="detection",
                         arch="detector:maskrcnn_botnet50_fpn", model_kwargs=dict(model.detector_config),
                         class_names=["__background__", "thing"])
    rc, out, err = run(capsys, ["detect", "eval", ck, "--images", img, "--ann", p, "--strict", "--device", "cpu"])
    assert_one_line_error(rc, err, str(p), "polygon points far outside the image")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc, out, err = run(capsys, ["detect", "eval", ck, "--images", img, "--ann", p, "--device", "cpu"])
    assert rc == 2 and "no (usable) annotations" in err and "Traceback" not in err


def test_many_annotations_are_refused_quickly(tmp_path, img, capsys):
    anns = [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": [i % 50, i % 30, 3, 3], "area": 9,
             "segmentation": [[i % 50, i % 30, i % 50 + 3, i % 30, i % 50 + 3, i % 30 + 3]]} for i in range(100000)]
    d = {**_base(), "annotations": anns}
    p = _write(tmp_path, d)
    assert p.stat().st_size > 10e6
    rc, out, err = run(capsys, ["data", "check-coco", p, "--images", img, "--masks"])
    assert rc == 2 and f"images with more than {coco.MAX_ANNOTATIONS_PER_IMAGE} annotations" in out
    assert "image 1: 100000 annotations" in out
    with pytest.raises(CocoFormatError, match=f"no usable images .* more than {coco.MAX_ANNOTATIONS_PER_IMAGE} "):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            CocoDetection(img, d)


def test_masks_over_the_memory_cap_drop_the_image(img, monkeypatch):
    d = _base()
    d["annotations"] = [{**d["annotations"][0], "id": i + 1} for i in range(10)]
    # masks are counted at the 1024 x 1024 canvas training resizes them to: 10 of them just exceed the cap
    monkeypatch.setattr(coco, "MAX_MASK_BYTES", 10 * 2**20 - 1)
    _, rep = validate_coco(d, img, require_masks=True)
    assert rep.counts["image_too_many_annotations"] == 1 and rep.num_images == 0
    _, rep = validate_coco({**d, "annotations": d["annotations"][:9]}, img, require_masks=True)
    assert rep.ok and rep.num_annotations == 9
    _, rep = validate_coco(d, img, require_masks=False)  # boxes only: no masks, no mask cap
    assert rep.num_annotations == 10


@pytest.mark.parametrize("bbox, problem, example", [
    ([25, 5, -20, 10], "ann_negative_size", "bbox [25, 5, -20, 10] has a negative width"),
    ([25, 15, -20, -10], "ann_negative_size", "bbox [25, 15, -20, -10] has a negative width and height"),
    ([5, 5, 20, 0], "ann_zero_area", "bbox [5, 5, 20, 0]"),
    ([5, 5, 0.5, 10], "ann_zero_area", "bbox [5, 5, 0.5, 10] (after clipping)"),
])
def test_check_coco_names_negative_and_empty_boxes_and_exits_2(tmp_path, img, capsys, bbox, problem, example):
    p = _write(tmp_path, _base(bbox=bbox))
    rc, out, err = run(capsys, ["data", "check-coco", p, "--images", img])
    assert f"1 x {coco.PROBLEMS[problem]} (e.g. annotation 1: {example})" in out, out
    assert ("negative" in out) == (problem == "ann_negative_size")  # an empty box is not called negative, nor back
    assert_one_line_error(rc, err, str(p), f"1 problem(s) that drop records (1 x {coco.PROBLEMS[problem]})")


def test_check_coco_exits_0_when_nothing_is_dropped(tmp_path, img, capsys):
    p = _write(tmp_path, _base(bbox=[50, 5, 20, 10]))  # partly outside: clipped and reported, kept
    rc, out, err = run(capsys, ["data", "check-coco", p, "--images", img])
    assert (rc, err) == (0, "") and "kept 1/1 images, 1/1 annotations; problems:" in out
    assert "1 x boxes partly outside the image (clipped, kept)" in out
