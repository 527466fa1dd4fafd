"""Detection outputs people use: COCO results that pycocotools reads and scores as `detect eval` does,
one AP unit (percent) in every place a run reports it, drawings with ground truth and labels that do
not overlap, and plots of each loss term and of AP."""
import contextlib
import io
import json
import os
import re

import numpy as np
import pytest
import torch

from botnet.cli import main
from detection_helpers import tiny_config_overrides

needs_fmnist = pytest.mark.skipif(
    not os.path.isfile("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
    and not os.environ.get("BOTNET_FASHION_MNIST"), reason="Fashion-MNIST IDX files not installed")


def _cat_id(c):
    return 100 + 7 * c  # non-contiguous ids that are not the labels 1..10: a wrong mapping shows


def _remap(src, dst):
    data = json.load(open(src))
    for c in data["categories"]:
        c["id"] = _cat_id(c["id"])
    for a in data["annotations"]:
        a["category_id"] = _cat_id(a["category_id"])
    dst.write_text(json.dumps(data))
    return dst


@pytest.fixture(scope="module")
def det_run(tmp_path_factory):
    """A tiny Mask R-CNN trained for 40 steps on a COCO set with ids 107, 114, ... (output captured)."""
    from botnet.data.mosaic import generate_fashion_mosaic, mosaic_paths

    root = tmp_path_factory.mktemp("detout")
    m = root / "mosaic"
    generate_fashion_mosaic(m, num_train=16, num_val=8, canvas=96, min_items=1, max_items=3, min_item_size=24,
                            max_item_size=48)
    tr, va = _remap(mosaic_paths(m, "train")[1], root / "train.json"), _remap(mosaic_paths(m, "val")[1], root / "val.json")
    run = root / "run"
    sets = tiny_config_overrides(m, run, epochs=10) + [
        "optim.lr=0.005", "train.eval_every=5", "eval.num_draw=2", "data.dataset=coco",
        f"data.train_images={m / 'train'}", f"data.train_ann={tr}", f"data.val_images={m / 'val'}", f"data.val_ann={va}"]
    args = []
    for s in sets:
        args += ["--set", s]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["detect", "train", *args]) == 0
    return {"root": root, "run": run, "val_images": m / "val", "val_ann": va, "output": out.getvalue()}


def _cocoeval(ann, results_file):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    out = {}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann))
        dt = gt.loadRes(str(results_file))  # what a user does with the file
        for t in ("bbox", "segm"):
            ev = COCOeval(gt, dt, t)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            out[t] = [100 * float(v) for v in ev.stats[:3]]
    return out


@needs_fmnist
def test_predict_results_load_in_pycocotools_and_score_what_eval_reports(det_run, tmp_path):
    run, ann = det_run["run"], det_run["val_ann"]
    assert main(["detect", "eval", str(run / "last.safetensors"), "--out", str(tmp_path / "ev")]) == 0
    pred = tmp_path / "pred"
    assert main(["detect", "predict", str(run / "last.safetensors"), "--images", str(det_run["val_images"]),
                 "--ann", str(ann), "--out", str(pred)]) == 0
    ev = json.load(open(tmp_path / "ev" / "eval.json"))
    assert ev["ap_unit"] == "percent"
    mine = _cocoeval(ann, pred / "coco_results.json")
    for t in ("bbox", "segm"):
        reported = [ev["metrics"][t][k] for k in ("AP", "AP50", "AP75")]
        assert mine[t] == pytest.approx(reported, abs=1e-6), t
    assert ev["metrics"]["bbox"]["AP50"] > 0  # the model finds something: the comparison is not 0 == 0
    # record by record: the same detections as the ones detect eval scored, with the file's category ids
    a = json.load(open(tmp_path / "ev" / "coco_results.json"))
    b = json.load(open(pred / "coco_results.json"))
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert (x["image_id"], x["category_id"]) == (y["image_id"], y["category_id"])
        assert x["score"] == pytest.approx(y["score"], abs=1e-4) and x["bbox"] == pytest.approx(y["bbox"], abs=1e-2)
        assert isinstance(y["segmentation"]["counts"], str) and y["segmentation"]["size"] == [96, 96]
    assert {r["category_id"] for r in b} <= {_cat_id(c) for c in range(1, 11)}
    gt_ids = {im["id"] for im in json.load(open(ann))["images"]}
    assert {r["image_id"] for r in b} <= gt_ids
    # one drawing per image, ground truth beside the predictions (auto scale: 96 px -> 6 x 96)
    from PIL import Image

    from botnet.detection.predict import PANEL_GAP

    pngs = sorted(pred.glob("*.png"))
    assert len(pngs) == 8 and Image.open(pngs[0]).size[0] == 2 * 576 + PANEL_GAP


@needs_fmnist
def test_plain_files_get_numbered_ids_and_the_training_category_ids(det_run, tmp_path, capsys):
    run, val = det_run["run"], det_run["val_images"]
    files = [str(val / "000003.png"), str(val / "000001.png")]
    pred = tmp_path / "p"
    assert main(["detect", "predict", str(run), *files, "--out", str(pred), "--score-threshold", "0.05"]) == 0
    recs = json.load(open(pred / "predictions.json"))
    assert [(r["image"], r["image_id"]) for r in recs] == [(files[0], 1), (files[1], 2)]
    res = json.load(open(pred / "coco_results.json"))
    assert {r["image_id"] for r in res} <= {1, 2} and res
    assert {r["category_id"] for r in res} <= {_cat_id(c) for c in range(1, 11)}  # the stored mapping
    listed = [d for r in recs for d in r["detections"]]
    assert listed and all(d["score"] >= 0.05 and d["category_id"] >= 107 for d in listed)
    assert len(listed) == sum(r["score"] >= 0.05 for r in res)
    # the checkpoint as `botnet predict` takes it: the same predictions
    again = tmp_path / "q"
    assert main(["detect", "predict", *files, "--checkpoint", str(run), "--out", str(again),
                 "--score-threshold", "0.05"]) == 0
    drop = lambda rs: [{k: v for k, v in r.items() if k != "drawing"} for r in rs]  # noqa: E731 (its own folder)
    assert drop(json.load(open(again / "predictions.json"))) == drop(recs)


@needs_fmnist
@pytest.mark.parametrize("extra, words", [
    (["--ann", "VAL_ANN"], "--ann and --images go together"),
    ([], "give image files, or --images DIR --ann FILE"),
    (["NO_RUN"], "give the checkpoint: botnet detect predict CHECKPOINT IMAGE"),
    (["OTHER_PNG", "--images", "VAL_DIR", "--ann", "VAL_ANN"], "is not one of the usable images"),
])
def test_bad_predict_arguments_are_one_line(det_run, tmp_path, capsys, extra, words):
    from PIL import Image

    other = tmp_path / "other.png"
    Image.new("RGB", (40, 30)).save(other)
    subst = {"VAL_ANN": str(det_run["val_ann"]), "VAL_DIR": str(det_run["val_images"]), "OTHER_PNG": str(other)}
    head = [] if extra == ["NO_RUN"] else [str(det_run["run"])]
    rc = main(["detect", "predict", *head, *[subst.get(a, a) for a in extra if a != "NO_RUN"], "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and words in err[0], err


@needs_fmnist
def test_one_ap_unit_in_the_log_lines_the_records_and_the_files(det_run):
    run, text = det_run["run"], det_run["output"]
    ev = json.load(open(run / "eval.json"))
    summary = json.load(open(run / "summary.json"))
    val = [json.loads(line) for line in open(run / "metrics.jsonl") if '"val"' in line]
    val = [r for r in val if r["phase"] == "val"]
    assert len(val) == 2  # eval_every 5 of 10 epochs
    box, mask = ev["metrics"]["bbox"]["AP"], ev["metrics"]["segm"]["AP"]
    assert box > 0 and ev["ap_unit"] == "percent"
    assert val[-1]["box_AP"] == pytest.approx(box) and val[-1]["mask_AP"] == pytest.approx(mask)
    assert summary["final"]["raw"]["box_AP"] == pytest.approx(box)
    assert summary["best"]["metric"] == "mask_AP" and summary["best"]["value"] == max(r["mask_AP"] for r in val)
    shown = re.findall(r"val box_AP=([\d.]+), .*mask_AP=([\d.]+)", text)
    assert shown and shown[-1] == (f"{box:.1f}", f"{mask:.1f}")
    final = re.search(r"raw box_AP ([\d.e+-]+), .*mask_AP ([\d.e+-]+)", text)
    assert final and (float(final.group(1)), float(final.group(2))) == pytest.approx((box, mask), rel=1e-3)
    md = (run / "eval.md").read_text()
    assert f"| box | {box:.1f} |" in md


@needs_fmnist
def test_a_detection_run_plots_loss_terms_and_ap_and_no_accuracy(det_run):
    from PIL import Image

    from botnet.detection.predict import PANEL_GAP

    run = det_run["run"]
    assert (run / "loss.png").is_file() and (run / "ap.png").is_file()
    assert not (run / "accuracy.png").exists()
    assert len(json.load(open(run / "coco_results.json"))) > 0
    drawings = sorted((run / "predictions").glob("*.png"))
    assert len(drawings) == 2 and Image.open(drawings[0]).size[0] == 2 * 96 * 3 + PANEL_GAP  # eval.draw_scale 3


def _figures(monkeypatch):
    """What each saved figure shows: per axes its y label and its lines (label -> y data)."""
    import botnet.viz.plots as plots

    seen, orig = {}, plots.save_figure

    def spy(fig, path):
        seen[os.path.basename(str(path))] = [
            (ax.get_ylabel(), {ln.get_label(): list(ln.get_ydata()) for ln in ax.get_lines()}) for ax in fig.axes]
        return orig(fig, path)

    monkeypatch.setattr(plots, "save_figure", spy)
    return seen


TERMS = ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg")


def test_detection_plots_name_the_loss_and_draw_each_term_and_ap(tmp_path, monkeypatch):
    from botnet.detection.task import DetectionTask
    from botnet.detection.config import DETECTION_DEFAULTS

    seen = _figures(monkeypatch)
    recs = [{"phase": "train", "step": s, "loss": 5.0 / s, **{k: (i + 1) / s for i, k in enumerate(TERMS)}}
            for s in range(1, 5)]
    recs += [{"phase": "val", "step": 2, "epoch": 1.0, "box_AP": 10.0, "box_AP50": 20.0, "mask_AP": 8.0,
              "mask_AP50": 15.0},
             {"phase": "val", "step": 4, "epoch": 2.0, "box_AP": 12.5, "box_AP50": 25.0, "mask_AP": 9.0,
              "mask_AP50": 16.0}]
    paths = DetectionTask(DETECTION_DEFAULTS).plot(recs, tmp_path)
    assert sorted(p.name for p in paths) == ["ap.png", "loss.png"] and not (tmp_path / "accuracy.png").exists()
    (total_label, total), (term_label, terms) = seen["loss.png"]
    assert "Mask R-CNN loss" in total_label and "cross-entropy" not in total_label
    assert total == {"train loss": [5.0 / s for s in range(1, 5)]}
    assert terms == {k: [(i + 1) / s for s in range(1, 5)] for i, k in enumerate(TERMS)}
    ((ap_label, ap),) = seen["ap.png"]
    assert ap_label == "COCO AP (%)"
    assert ap == {"box AP": [10.0, 12.5], "box AP50": [20.0, 25.0], "mask AP": [8.0, 9.0], "mask AP50": [15.0, 16.0]}
    faster = DETECTION_DEFAULTS | {"model": {**DETECTION_DEFAULTS["model"], "kind": "fasterrcnn"}}
    DetectionTask(faster).plot(recs[:4], tmp_path / "f")  # no evaluation yet: no ap.png
    assert "Faster R-CNN loss" in seen["loss.png"][0][0] and not (tmp_path / "f" / "ap.png").exists()


def test_classification_loss_is_called_cross_entropy(tmp_path, monkeypatch):
    from botnet.classification.task import ClassificationTask

    seen = _figures(monkeypatch)
    recs = [{"phase": "train", "step": 1, "loss": 2.0}, {"phase": "val", "step": 1, "epoch": 1.0, "top1": 50.0}]
    ClassificationTask().plot(recs, tmp_path)
    assert seen["loss.png"][0][0] == "cross-entropy" and seen["accuracy.png"][0][1] == {"val top-1": [50.0]}


def _disjoint(rects, size):
    for i, a in enumerate(rects):
        assert 0 <= a[0] and a[2] <= size and 0 <= a[1] and a[3] <= size
        for b in rects[i + 1:]:
            assert min(a[2], b[2]) <= max(a[0], b[0]) or min(a[3], b[3]) <= max(a[1], b[1]), (a, b)


def test_labels_never_overlap():
    from botnet.detection.predict import place_labels

    boxes = [(50, 60, 150, 160)] * 8 + [(52, 62, 148, 158), (0, 0, 20, 20)]  # a pile of boxes, one in a corner
    rects = place_labels(boxes, [(60, 14)] * len(boxes), 200, 200)
    assert rects[0] == (50, 46, 110, 60)  # the best box's label sits right above it
    assert None not in rects  # there is room for all ten
    _disjoint(rects, 200)
    crowded = place_labels([(10, 10, 50, 50)] * 40, [(30, 12)] * 40, 60, 60)  # room for about ten
    kept = [r for r in crowded if r is not None]
    assert 4 <= len(kept) < 40 and crowded[0] is not None  # the best ones keep their labels
    _disjoint(kept, 60)


def test_box_lines_and_labels_grow_with_the_image():
    from botnet.detection.predict import draw_predictions

    def drawn(size):
        img = torch.zeros(3, size, size, dtype=torch.uint8)
        k = size / 100
        out = {"boxes": torch.tensor([[20 * k, 20 * k, 80 * k, 80 * k]]), "labels": torch.tensor([1]),
               "scores": torch.tensor([0.9])}
        arr = np.asarray(draw_predictions(img, out, ["bg", "shirt"])).astype(np.int64)
        lit = arr.sum(-1) > 0
        line = int(lit[size // 2, : size // 2].sum())  # the box's left edge, half-way down
        label_rows = int(lit[: int(20 * k)].any(1).sum())  # the label above the box
        return line, label_rows

    small, big = drawn(100), drawn(1000)
    assert small[0] >= 1 and big[0] >= 4 and big[1] >= 2 * small[1] >= 24


def test_ground_truth_panel_beside_the_predictions():
    from botnet.detection.predict import PANEL_GAP, draw_predictions

    img = torch.zeros(3, 60, 80, dtype=torch.uint8)
    masks = torch.zeros(1, 1, 60, 80)
    masks[0, 0, 10:30, 10:40] = 0.9
    out = {"boxes": torch.tensor([[10.0, 10.0, 40.0, 30.0]]), "labels": torch.tensor([1]),
           "scores": torch.tensor([0.2]), "masks": masks}
    target = {"boxes": torch.tensor([[40.0, 20.0, 70.0, 50.0]]), "labels": torch.tensor([1]),
              "masks": torch.zeros(1, 60, 80, dtype=torch.uint8)}
    target["masks"][0, 20:50, 40:70] = 1
    pic = draw_predictions(img, out, ["bg", "a"], score_threshold=0.5, scale=2, target=target)
    strip = pic.height - 120
    assert pic.width == 2 * 160 + PANEL_GAP and strip > 0
    a = np.asarray(pic).astype(np.int64)
    left, right = a[strip:, :160], a[strip:, 160 + PANEL_GAP:]
    assert left[2 * 35, 2 * 55].sum() > 0  # the ground-truth mask is tinted on the left
    assert right.sum() == 0  # the prediction scored 0.2 < 0.5: nothing drawn on the right


def test_a_damaged_category_mapping_is_one_line():
    from botnet.detection.predict import label_to_category
    from botnet.errors import CheckpointError

    assert label_to_category({"extra": {"label_to_cat_id": {"1": 107, "2": 114}}}, 3) == {1: 107, 2: 114}
    assert label_to_category({"extra": {}}, 3) is None
    for bad in ({"7": 1}, {"1": "x"}, [1, 2], {"1": True}):
        with pytest.raises(CheckpointError, match="label_to_cat_id"):
            label_to_category({"extra": {"label_to_cat_id": bad}}, 3)


def test_an_eval_json_of_fractions_is_read_in_percent():
    from botnet.detection.evaluate import metrics_in_percent

    old = {"metrics": {"bbox": {"AP": 0.25, "APl": None, "per_class": {"a": 0.5, "b": None}, "num_images": 8}}}
    new = metrics_in_percent(old)["bbox"]
    assert new["AP"] == pytest.approx(25.0) and new["APl"] is None and new["num_images"] == 8
    assert new["per_class"] == {"a": pytest.approx(50.0), "b": None}
    current = {"ap_unit": "percent", "metrics": {"bbox": {"AP": 25.0}}}
    assert metrics_in_percent(current) == {"bbox": {"AP": 25.0}}


@pytest.mark.parametrize("setting, words", [
    ("eval.draw_scale=0", "eval.draw_scale = 0 is invalid: it must be an integer >= 1 and <= 16"),
    ("eval.num_draw=-1", "eval.num_draw = -1 is invalid"), ("eval.draw_score=2", "eval.draw_score = 2 is invalid")])
def test_drawing_settings_are_checked_before_training(tmp_path, capsys, setting, words):
    rc = main(["detect", "train", "--set", f"output.dir={tmp_path / 'run'}", "--set", setting])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and words in err[0], err
    assert not (tmp_path / "run").exists()
