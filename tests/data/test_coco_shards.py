"""COCO sets as tar shards: the round trip COCO set -> shards (every image and record read back equal, the
targets equal to those of the instances file), each rank and worker reading its own images, and the
refusals of the writer and of training, one line each."""
import json
import tarfile

import pytest
import torch

from botnet.cli import main
from botnet.data.coco import CocoDetection
from botnet.data.coco_shards import CocoShardSplit, CocoShardStream, CocoShardVal, read_detection_index
from botnet.data.shards import IMAGE_KEYS
from helpers import TINY_COCO_CATEGORIES, assert_one_line_error, run, tiny_coco, tree


@pytest.fixture(scope="module")
def coco_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco_shards")
    src = tiny_coco(root / "src")
    assert main(["data", "shards", str(src), str(root / "out"), "--max-count", "5"]) == 0
    return src, root / "out"


def _tar_samples(path):
    """{key: {field: bytes}} of one shard, read with tarfile (not the code under test)."""
    out = {}
    with tarfile.open(path) as tf:
        for m in tf.getmembers():
            key, field = m.name.split(".", 1)
            out.setdefault(key, {})[field] = tf.extractfile(m).read()
    return out


def test_round_trip_keeps_every_image_and_record_and_the_categories(coco_shards):
    src, out = coco_shards
    index = read_detection_index(out)
    assert index.task == "detection" and index.info["categories"] == TINY_COCO_CATEGORIES
    assert index.classes == ["red", "green", "blue"]
    for split, n in (("train", 12), ("val", 4)):
        source = json.loads((src / f"instances_{split}.json").read_text())
        files, lengths = index.splits[split]
        assert lengths == [5] * (n // 5) + ([n % 5] if n % 5 else [])
        assert index.info["splits"][split]["num_annotations"] == len(source["annotations"])
        got = {}
        for f in files:
            for key, sample in _tar_samples(out / f).items():
                rec = json.loads(sample["json"])
                (field,) = set(sample) & set(IMAGE_KEYS)
                assert sample[field] == (src / split / rec["image"]["file_name"]).read_bytes()  # bytes unchanged
                assert field == rec["image"]["file_name"].rsplit(".", 1)[1]
                got[rec["image"]["id"]] = (rec["image"], rec["annotations"])
        want = {im["id"]: (im, [a for a in source["annotations"] if a["image_id"] == im["id"]])
                for im in source["images"]}
        assert got == want  # polygons, both RLE forms, crowd and empty images, as the source file holds them
    assert json.loads((out / "instances_val.json").read_text()) == json.loads((src / "instances_val.json").read_text())
    assert not (out / "instances_train.json").exists()


@pytest.mark.parametrize("split", ["train", "val"])
def test_shard_samples_are_the_images_and_targets_of_the_instances_file(coco_shards, split):
    src, out = coco_shards
    index = read_detection_index(out)
    ref = CocoDetection(src / split, src / f"instances_{split}.json", with_masks=True, quiet=True)
    stream = CocoShardStream(CocoShardSplit(index, split, with_masks=True), batch_size=1, train=False)
    seen, instances = [], 0
    for img, target in stream:
        want_img, want = ref[ref.ids.index(target["image_id"])]
        assert torch.equal(img, want_img)
        assert set(target) == set(want)
        for k in ("boxes", "labels", "masks", "area", "iscrowd"):
            assert torch.equal(target[k], want[k]), k
        seen.append(target["image_id"])
        instances += int(target["masks"].flatten(1).any(1).sum())
    assert sorted(seen) == ref.ids
    assert instances == sum(1 for a in ref.coco.dataset["annotations"] if not a["iscrowd"])  # no mask came back empty
    if split == "val":  # what evaluation reads: the same ground truth and categories as the instances file
        val = CocoShardVal(index, with_masks=True)
        assert val.coco.dataset == ref.coco.dataset and val.label_to_cat_id == ref.label_to_cat_id == {1: 3, 2: 7,
                                                                                                     3: 11}
        batches = list(val.eval_loader(batch_size=3))
        assert [len(b[0]) for b in batches] == [3, 1]
        assert sorted(t["image_id"] for _, ts in batches for t in ts) == ref.ids


def test_ranks_and_workers_read_each_training_image_once(coco_shards):
    _, out = coco_shards
    split = CocoShardSplit(read_detection_index(out), "train", with_masks=False)
    orders = []
    for epoch in (0, 1):
        ids = []
        for rank in (0, 1):
            s = CocoShardStream(split, batch_size=2, rank=rank, world_size=2, num_workers=2, seed=5, shuffle_block=2)
            s.set_epoch(epoch)
            parts = [[t["image_id"] for _, t in s._train_iter(w)] for w in range(2)]
            assert [len(p) for p in parts] == [4, 2]  # 3 batches of 2 per rank: 2 to worker 0, 1 to worker 1
            ids += [i for p in parts for i in p]
        assert sorted(ids) == list(range(100, 112))
        orders.append(ids)
    assert orders[0] != orders[1]  # each epoch in its own order, drawn from (seed, epoch)


def test_writer_refuses_bad_records_unless_skipped_and_needs_the_splits(tmp_path, capsys):
    src = tiny_coco(tmp_path / "src", n_train=4, n_val=2)
    data = json.loads((src / "instances_train.json").read_text())
    data["annotations"][0]["category_id"] = 99
    data["annotations"][1]["bbox"] = [1, 1, 0, 5]
    (src / "instances_train.json").write_text(json.dumps(data))
    out = tmp_path / "out"
    rc, _, err = run(capsys, ["data", "shards", src, out])
    assert_one_line_error(rc, err, "instances_train.json", "unknown category_id", "zero-area", "--skip-bad")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    rc, stdout, _ = run(capsys, ["data", "shards", src, out, "--skip-bad"])
    assert rc == 0 and "left out" in stdout and "unknown category_id" in stdout
    index = read_detection_index(out)
    assert index.info["splits"]["train"]["num_annotations"] == len(data["annotations"]) - 2
    assert "detect train --dataset shards" in stdout
    before = tree(out)
    for args, needles in (([src, out], ["--overwrite"]),
                          ([src, tmp_path / "o2", "--splits", "train,test"], ["'test'", "train and val"])):
        rc, _, err = run(capsys, ["data", "shards", *args])
        assert_one_line_error(rc, err, *needles)
    assert tree(out) == before
    (src / "instances_val.json").unlink()
    rc, _, err = run(capsys, ["data", "shards", src, tmp_path / "o3"])
    assert_one_line_error(rc, err, "no val split", "--splits train")
    assert run(capsys, ["data", "shards", src, tmp_path / "o3", "--splits", "train", "--skip-bad"])[0] == 0
    assert sorted(read_detection_index(tmp_path / "o3").splits) == ["train"]


def test_training_refuses_shards_of_the_other_task_or_none(coco_shards, tmp_path, capsys):
    src, out = coco_shards
    cls = tmp_path / "cls"
    (cls / "train" / "a").mkdir(parents=True)
    (cls / "val" / "a").mkdir(parents=True)
    for s in ("train", "val"):
        (cls / s / "a" / "x.png").write_bytes((src / "train" / "train000.png").read_bytes())
    assert run(capsys, ["data", "shards", cls, tmp_path / "cls-shards"])[0] == 0
    det = ["detect", "train", "--dataset", "shards", "--no-progress"]
    rows = [
        (det + ["--data-dir", src, "--output", tmp_path / "r1"], ["is not a shards folder", "botnet data shards"]),
        (det + ["--data-dir", tmp_path / "cls-shards", "--output", tmp_path / "r2"],
         ["holds classification shards", "botnet train --dataset shards"]),
        (["train", "--dataset", "shards", "--data-dir", out, "--output", tmp_path / "r3"],
         ["holds detection shards", "botnet detect train --dataset shards"]),
        (det + ["--data-dir", out, "--set", "data.remove_empty=true", "--output", tmp_path / "r4"],
         ["data.remove_empty"]),
    ]
    for args, needles in rows:
        rc, _, err = run(capsys, args)
        err = "\n".join(ln for ln in err.splitlines() if " -> " not in ln)  # the auto-resolved settings' lines
        assert_one_line_error(rc, err, *needles)
        assert not args[args.index("--output") + 1].exists()
