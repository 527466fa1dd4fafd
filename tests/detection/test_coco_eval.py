import copy
import json
import random

import pytest

from botnet.detection.coco_eval import STAT_NAMES, coco_evaluate, outputs_to_coco_results, results_markdown


def _square_rle(h, w, x0, y0, x1, y1):
    import numpy as np
    from pycocotools import mask as mask_utils

    m = np.zeros((h, w), dtype=np.uint8)
    m[y0:y1, x0:x1] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _gt():
    images = [{"id": i, "file_name": f"{i}.png", "width": 100, "height": 80} for i in (1, 2)]
    anns = []
    boxes = {1: [(10, 10, 40, 40, 1), (50, 20, 90, 70, 2)], 2: [(5, 5, 60, 60, 1)]}
    for img_id, bs in boxes.items():
        for x0, y0, x1, y1, c in bs:
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": c, "bbox": [x0, y0, x1 - x0, y1 - y0],
                         "area": (x1 - x0) * (y1 - y0), "iscrowd": 0,
                         "segmentation": _square_rle(80, 100, x0, y0, x1, y1)})
    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    return {"images": images, "annotations": anns, "categories": cats}


def _perfect(gt):
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": 0.9,
             "segmentation": a["segmentation"]} for a in gt["annotations"]]


def test_perfect_predictions_give_ap_100_percent():
    gt = _gt()
    m = coco_evaluate(gt, _perfect(gt))
    for t in ("bbox", "segm"):  # percent, as the paper reports it (pycocotools' stats say 1.0)
        assert m[t]["AP"] == pytest.approx(100.0)
        assert m[t]["AP50"] == pytest.approx(100.0) and m[t]["AP75"] == pytest.approx(100.0)
        assert m[t]["per_class"] == {"a": pytest.approx(100.0), "b": pytest.approx(100.0)}
        assert m[t]["APl"] is None  # no large objects: COCOeval's -1 becomes None


def test_known_imperfect_case():
    """Category a has 2 ground-truth boxes; one is found exactly (score 0.9), one is missed, and a
    false positive scores 0.8. Precision is 1 up to recall 0.5 and recall never exceeds 0.5, so
    the 101-point interpolated AP is 51/101 at every IoU threshold. Category b is found exactly (AP 100 %).
    """
    gt = _gt()
    preds = [p for p in _perfect(gt) if not (p["image_id"] == 2)]  # miss the only 'a' box of image 2
    preds.append({"image_id": 2, "category_id": 1, "bbox": [70, 60, 20, 15], "score": 0.8,
                  "segmentation": _square_rle(80, 100, 70, 60, 90, 75)})
    m = coco_evaluate(gt, preds)
    for t in ("bbox", "segm"):
        assert m[t]["per_class"]["a"] == pytest.approx(100 * 51 / 101)
        assert m[t]["per_class"]["b"] == pytest.approx(100.0)
        assert m[t]["AP"] == pytest.approx(100 * (51 / 101 + 1.0) / 2)
        assert m[t]["AR100"] == pytest.approx(100 * (0.5 + 1.0) / 2)


def test_detection_on_crowd_region_is_ignored():
    gt = _gt()
    gt["annotations"].append({"id": 99, "image_id": 2, "category_id": 1, "bbox": [65, 5, 30, 30], "area": 900,
                              "iscrowd": 1, "segmentation": _square_rle(80, 100, 65, 5, 95, 35)})
    preds = _perfect(gt)[:3]
    preds.append({"image_id": 2, "category_id": 1, "bbox": [66, 6, 28, 28], "score": 0.95})
    m = coco_evaluate(gt, preds, iou_types=("bbox",))
    assert m["bbox"]["AP"] == pytest.approx(100.0)  # not a false positive: it matches the crowd region


def test_no_detections_gives_zero():
    m = coco_evaluate(_gt(), [])
    assert all(m[t][k] == 0.0 for t in ("bbox", "segm") for k in STAT_NAMES)


def test_faster_coco_eval_matches_pycocotools():
    pytest.importorskip("faster_coco_eval")
    gt = _gt()
    rng = random.Random(0)
    preds = []
    for p in _perfect(gt) * 3:
        q = copy.deepcopy(p)
        q["bbox"] = [v + rng.uniform(-6, 6) for v in q["bbox"]]
        q["score"] = rng.random()
        q["category_id"] = rng.choice([1, 2])
        x, y, w, h = (int(round(v)) for v in q["bbox"])
        q["segmentation"] = _square_rle(80, 100, max(x, 0), max(y, 0), min(x + w, 100), min(y + h, 80))
        preds.append(q)
    a = coco_evaluate(gt, preds, backend="pycocotools")
    b = coco_evaluate(gt, preds, backend="faster_coco_eval")
    for t in ("bbox", "segm"):
        assert 5 < a[t]["AP"] < 95  # a non-trivial case
        for k in STAT_NAMES:
            assert (a[t][k] is None) == (b[t][k] is None)
            if a[t][k] is not None:
                assert b[t][k] == pytest.approx(a[t][k], abs=1e-7), (t, k)
        assert b[t]["per_class"] == pytest.approx(a[t]["per_class"])


def test_outputs_to_results_and_markdown():
    import torch

    out = {"boxes": torch.tensor([[10.0, 10.0, 40.0, 40.0]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([1]),
           "masks": torch.zeros(1, 1, 80, 100)}
    out["masks"][0, 0, 10:40, 10:40] = 1.0
    res = outputs_to_coco_results([out], [1], {1: 7})
    assert res[0]["category_id"] == 7 and res[0]["bbox"] == [10.0, 10.0, 30.0, 30.0]
    json.dumps(res)  # serialisable (RLE counts as str)
    md = results_markdown(coco_evaluate(_gt(), _perfect(_gt())))
    assert "| box | 100.0 |" in md and "| mask | 100.0 |" in md and "| a |" in md
