"""Sharded tar data sets: the round trip folder -> shards, the writer's refusals, each rank and worker
reading its own shards, and a mid-epoch resume that continues exactly."""
import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from botnet.cli import main
from botnet.data.folder import SafeImageFolder
from botnet.data.shard_stream import ShardLoader, ShardSplit, ShardStream, batches_used, worker_runs
from botnet.data.shards import read_index
from helpers import assert_one_line_error, run, tree

TINY = ["--set", "model.kwargs={widths: [4, 8, 8, 16], stem_width: 8}", "--no-progress", "--no-plots",
        "--eval-every", "0", "--threads", "1", "--img-size", "16", "--deterministic"]


def _id_folder(root, n_train=32, n_val=12, classes=("a", "b", "c", "d")):
    """ROOT/{train,val}/CLASS/NAME.png of random pixels; the first one spells the image's number (R = i % 256,
    G = i // 256)."""
    i = 0
    for split, n in (("train", n_train), ("val", n_val)):
        for k in range(n):
            c = classes[k % len(classes)]
            (root / split / c).mkdir(parents=True, exist_ok=True)
            px = np.random.default_rng(i).integers(0, 256, (8, 8, 3), dtype=np.uint8)  # texture: crops differ
            px[0, 0] = i % 256, i // 256, 40 * (k % len(classes))
            Image.fromarray(px).save(root / split / c / f"img{i:03d}.png")
            i += 1
    return root


def _pixel_id(img) -> int:
    a = np.asarray(img)
    return int(a[0, 0, 0]) + 256 * int(a[0, 0, 1])


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    src = _id_folder(root / "src")
    assert main(["data", "shards", str(src), str(root / "out"), "--max-count", "4"]) == 0
    return src, root / "out"


def test_round_trip_keeps_every_image_its_class_and_the_classes(shards):
    src, out = shards
    index = read_index(out, ("train", "val"))
    assert index.classes == ["a", "b", "c", "d"]
    assert json.loads((out / ".botnet-generated.json").read_text())["generator"] == "botnet data shards"
    for split, n in (("train", 32), ("val", 12)):
        files, lengths = index.splits[split]
        assert lengths == [4] * (n // 4) and files == [f"{split}-{i:06d}.tar" for i in range(n // 4)]
        folder = SafeImageFolder(src / split, class_to_idx={c: i for i, c in enumerate(index.classes)})
        want = {_pixel_id(Image.open(p)): (t, open(p, "rb").read()) for p, t in folder.samples}
        got = {}
        for f in files:  # the tar members themselves: the file's bytes unchanged, its class, its name
            with tarfile.open(out / f) as tf:
                names = tf.getnames()
                for key in sorted({m.split(".")[0] for m in names}):
                    data = tf.extractfile(f"{key}.png").read()
                    meta = json.loads(tf.extractfile(f"{key}.json").read())
                    assert (src / split / meta["filename"]).read_bytes() == data
                    got[_pixel_id(Image.open(io.BytesIO(data)))] = (int(tf.extractfile(f"{key}.cls").read()), data)
        assert got == want
        stream = ShardStream(ShardSplit(index, split), batch_size=1, train=False)
        assert sorted((_pixel_id(img), t) for img, t in stream) == sorted((i, t) for i, (t, _) in want.items())
    # timm's wds reader reads the same folder through the same index
    from timm.data import create_dataset

    timm_ds = create_dataset("wds/x", root=str(out), split="val")
    assert sorted(int(t) for _, t in timm_ds) == sorted(t for t, _ in want.values())


def test_writer_refuses_what_it_must_not_write_over(tmp_path, capsys):
    src = _id_folder(tmp_path / "src", n_train=4, n_val=4)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    before = tree(foreign)
    rc, _, err = run(capsys, ["data", "shards", src, foreign])
    assert_one_line_error(rc, err, str(foreign), "botnet did not write it")
    assert tree(foreign) == before
    out = tmp_path / "out"
    assert run(capsys, ["data", "shards", src, out])[0] == 0
    rc, _, err = run(capsys, ["data", "shards", src, out])
    assert_one_line_error(rc, err, "--overwrite")
    (src / "train" / "a" / "img000.png").write_bytes(b"not an image")
    rc, _, err = run(capsys, ["data", "shards", src, out, "--overwrite"])
    assert_one_line_error(rc, err, "img000.png", "--skip-bad")
    rc, stdout, _ = run(capsys, ["data", "shards", src, out, "--overwrite", "--skip-bad"])
    assert rc == 0 and "left out" in stdout and "img000.png" in stdout
    assert read_index(out, ("train",)).splits["train"][1] == [3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign", "out", "src"]  # no temporary folder left
    for args, needles in (([tmp_path / "nope", tmp_path / "o2"], ["nope"]),
                          ([src, src / "inside"], ["overlap"]),
                          ([src, tmp_path / "o3", "--splits", "train,../x"], ["split name"])):
        rc, _, err = run(capsys, ["data", "shards", *args])
        assert_one_line_error(rc, err, *needles)


def test_training_refuses_a_bad_index_in_one_line(shards, tmp_path, capsys):
    src, out = shards
    rc, _, err = run(capsys, ["train", "--dataset", "shards", "--data-dir", src, *TINY, "--output", tmp_path / "r1"])
    assert_one_line_error(rc, err, "_info.json", "botnet data shards")
    bad = tmp_path / "bad"
    bad.mkdir()
    info = json.loads((out / "_info.json").read_text())
    info["splits"]["train"]["filenames"][0] = "../out/train-000000.tar"
    (bad / "_info.json").write_text(json.dumps(info))
    rc, _, err = run(capsys, ["train", "--dataset", "shards", "--data-dir", bad, *TINY, "--output", tmp_path / "r2"])
    assert_one_line_error(rc, err, "../out/train-000000.tar", "not the name of a .tar file")
    info["splits"]["train"]["filenames"][0] = "train-000000.tar"
    (bad / "_info.json").write_text(json.dumps(info))
    for f in info["splits"]["train"]["filenames"] + info["splits"]["val"]["filenames"]:
        (bad / f).write_bytes((out / f).read_bytes())
    (bad / "train-000003.tar").write_bytes((out / "train-000003.tar").read_bytes()[:3000])  # cut short
    rc, _, err = run(capsys, ["train", "--dataset", "shards", "--data-dir", bad, *TINY, "--output", tmp_path / "r3",
                              "--batch-size", "32", "--num-workers", "2"])
    assert_one_line_error(rc, err, str(bad / "train-000003.tar"), "write the shards again",
                          log_prefixes=("data.", "classification:"))


def _raw_stream(index, rank, world, workers, epoch):
    """What each worker slot of one rank reads in an epoch: [(shard, key)] (images not decoded)."""
    s = ShardStream(ShardSplit(index, "train"), batch_size=4, rank=rank, world_size=world, num_workers=workers,
                    seed=7, shuffle_block=3)
    s._decode = lambda raw, augment_seed: (raw[0], raw[1]["__key__"])
    s.set_epoch(epoch)
    return s, [list(s._train_iter(w)) for w in range(workers)]


def test_ranks_and_workers_read_disjoint_shards_covering_the_split_once(shards):
    _, out = shards
    index = read_index(out, ("train",))
    orders = []
    for epoch in (0, 1):
        parts = [part for r in (0, 1) for part in _raw_stream(index, r, 2, 2, epoch)[1]]
        keys = [k for p in parts for _, k in p]
        assert sorted(keys) == sorted(f"{i:06d}" for i in range(32))  # every sample once
        shard_sets = [{s for s, _ in p} for p in parts]  # 32 samples / 4 readers = 2 whole shards each
        assert all(len(a) == 2 for a in shard_sets) and len(set().union(*shard_sets)) == 8
        orders.append(keys)
    assert orders[0] != orders[1] and sorted(orders[0]) == sorted(orders[1])  # a new order each epoch
    # the real loader (two worker processes) hands out exactly the planned batches of its rank
    stream, parts = _raw_stream(index, 1, 2, 2, 1)
    loader = ShardLoader(stream, batch_size=4, num_workers=2, collate_fn=lambda b: [k for _, k in b])
    got = [k for batch in loader for k in batch]
    assert len(loader) == 4 and sorted(got) == sorted(k for p in parts for _, k in p)


def test_batches_used_follows_the_loaders_turns():
    for S, W in ((7, 2), (9, 4), (3, 5), (8, 1)):
        runs = worker_runs(S, W)
        assert sum(c for _, c in runs) == S and runs[0][0] == 0
        turns = []  # the loader: one batch from each worker in turn, skipping workers that ran out
        left = [c for _, c in runs]
        while any(left):
            for w in range(W):
                if left[w]:
                    turns.append(w)
                    left[w] -= 1
        for done in range(S + 1):
            assert [batches_used(done, S, W, w) for w in range(W)] == [turns[:done].count(w) for w in range(W)]


def _epoch_batches(index, epoch, skip_batches=0, workers=2):
    from botnet.data.transforms import folder_transforms

    # 30 samples: 7 batches of 4, which two workers share unevenly (4 and 3)
    split = ShardSplit(index, "train", folder_transforms(8, True, (0.5,) * 3, (0.5,) * 3, scale=(0.3, 1.0)), limit=30)
    s = ShardStream(split, batch_size=4, num_workers=workers, seed=3, shuffle_block=5)
    loader = ShardLoader(s, batch_size=4, num_workers=workers)
    s.set_epoch(epoch)
    s.skip(skip_batches * 4)
    return list(loader)


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_resumed_mid_epoch_gives_exactly_the_remaining_batches(shards, workers):
    _, out = shards
    index = read_index(out, ("train",))
    full = _epoch_batches(index, 1, workers=workers)
    assert len(full) == 7
    rng_before = torch.get_rng_state()
    resumed = _epoch_batches(index, 1, skip_batches=3, workers=workers)  # 3: the next batch is worker 1's turn
    assert torch.equal(torch.get_rng_state(), rng_before)  # the per-sample seeds leave the training's RNG alone
    assert len(resumed) == 4
    for (xa, ya), (xb, yb) in zip(full[3:], resumed):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    other = _epoch_batches(index, 2, workers=workers)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(full, other))


def test_training_from_shards_resumes_mid_epoch_bit_identically(shards, tmp_path):
    _, out = shards
    args = ["train", "--dataset", "shards", "--data-dir", str(out), *TINY, "--batch-size", "4", "--epochs", "2",
            "--num-workers", "2", "--set", "data.shuffle_block=5", "--label-smoothing", "0.1"]
    assert main(args + ["--output", str(tmp_path / "a"), "--max-steps", "13"]) == 0
    assert main(args + ["--output", str(tmp_path / "b"), "--max-steps", "5"]) == 0  # mid-epoch: 8 steps per epoch
    mid = load_file(tmp_path / "b" / "last.safetensors")
    assert main(args + ["--output", str(tmp_path / "b"), "--max-steps", "13", "--resume", str(tmp_path / "b")]) == 0
    a, b = load_file(tmp_path / "a" / "last.safetensors"), load_file(tmp_path / "b" / "last.safetensors")
    assert max((a[k].float() - mid[k].float()).abs().max().item() for k in a) > 1e-4
    assert all(torch.equal(a[k], b[k]) for k in a)
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["steps"] == 13 and summary["final"]["raw"]["n"] == 12  # the whole val split, evaluated
