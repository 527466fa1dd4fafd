"""`botnet detect train --dataset shards`: a short run from COCO shards trains and evaluates (the same
detections as evaluating on the source folder), and a run stopped mid-epoch resumes to the same weights
as an uninterrupted one."""
import json

import pytest
import torch
from safetensors.torch import load_file

from botnet.cli import main
from detection_helpers import tiny_config_overrides
from helpers import tiny_coco


def _sets(out_dir, **kw):
    """The tiny detector of the detection tests, without the mosaic's data keys."""
    args = []
    for o in tiny_config_overrides("unused", out_dir, **kw):
        if not o.startswith(("data.root=", "data.mosaic=", "data.batch_size=")):
            args += ["--set", o]
    return args


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("det_shards")
    src = tiny_coco(root / "src")  # 12 train images, 4 val (48 x 64), categories 3, 7, 11
    assert main(["data", "shards", str(src), str(root / "shards"), "--max-count", "5"]) == 0
    return src, root / "shards"


def test_training_from_shards_evaluates_on_the_val_shards(shards, tmp_path):
    src, out = shards
    run = tmp_path / "run"
    assert main(["detect", "train", "--dataset", "shards", "--data-dir", str(out), *_sets(run, epochs=2),
                 "--batch-size", "4", "--num-workers", "2"]) == 0
    epochs = [json.loads(ln) for ln in open(run / "metrics.jsonl") if '"train_epoch"' in ln]
    assert [e["step"] for e in epochs] == [3, 6]  # 12 images, batch 4
    ev = json.loads((run / "eval.json").read_text())
    assert ev["num_train_images"] == 12 and ev["num_val_images"] == 4
    for t in ("bbox", "segm"):
        assert ev["metrics"][t]["num_images"] == 4 and set(ev["metrics"][t]["per_class"]) == {"red", "green", "blue"}
    assert len(list((run / "predictions").glob("*.png"))) == 1  # drawn from the first val shard's image
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["data"]["dataset"] == "shards" and cfg["data"]["root"] == str(out)
    # detect eval of the run reads the val shards and OUT/instances_val.json; on the source folder it finds
    # exactly the same detections
    assert main(["detect", "eval", str(run), "--out", str(tmp_path / "e1")]) == 0
    assert main(["detect", "eval", str(run), "--out", str(tmp_path / "e2"), "--images", str(src / "val"),
                 "--ann", str(src / "instances_val.json")]) == 0
    a, b = (json.loads((tmp_path / e / "coco_results.json").read_text()) for e in ("e1", "e2"))
    assert a and a == b
    assert {r["category_id"] for r in a} <= {3, 7, 11}
    ea, eb = (json.loads((tmp_path / e / "eval.json").read_text()) for e in ("e1", "e2"))
    assert ea["metrics"] == eb["metrics"] and ea["ann"] == str(out / "instances_val.json")


def test_training_from_shards_resumes_mid_epoch_bit_identically(shards, tmp_path):
    _, out = shards
    args = ["detect", "train", "--dataset", "shards", "--data-dir", str(out), "--batch-size", "2", "--num-workers",
            "2", "--deterministic", "--set", "data.shuffle_block=4", "--set", "eval.num_draw=0"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(args + _sets(a, epochs=2) + ["--max-steps", "9"]) == 0
    assert main(args + _sets(b, epochs=2) + ["--max-steps", "4"]) == 0  # mid-epoch: 6 steps per epoch
    mid = load_file(b / "last.safetensors")
    assert main(args + _sets(b, epochs=2) + ["--max-steps", "9", "--resume", str(b)]) == 0
    wa, wb = load_file(a / "last.safetensors"), load_file(b / "last.safetensors")
    assert max((wa[k].float() - mid[k].float()).abs().max().item() for k in wa) > 1e-4
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    steps = [json.loads(ln)["step"] for ln in open(b / "metrics.jsonl") if '"phase": "train"' in ln]
    assert steps == list(range(1, 10))  # the resumed run continued at step 5, repeating and skipping none
