"""End-to-end: `botnet detect train` on a tiny mosaic lowers the loss, resumes, evaluates, predicts;
bad annotation files stop the run before training; a two-process gloo DDP run works."""
import json
import os
import subprocess
import sys

import pytest

from botnet.cli import main
from detection_helpers import tiny_config_overrides

needs_fmnist = pytest.mark.skipif(
    not os.path.isfile("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
    and not os.environ.get("BOTNET_FASHION_MNIST"), reason="Fashion-MNIST IDX files not installed")


def _sets(overrides):
    args = []
    for o in overrides:
        args += ["--set", o]
    return args


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("det")
    run = root / "run"
    rc = main(["detect", "train", *_sets(tiny_config_overrides(root / "mosaic", run, epochs=3))])
    assert rc == 0
    return root, run


def _records(run):
    return [json.loads(line) for line in open(run / "metrics.jsonl")]


@needs_fmnist
def test_short_training_lowers_the_loss(trained):
    _, run = trained
    epochs = [r for r in _records(run) if r["phase"] == "train_epoch"]
    assert len(epochs) == 3
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    ev = json.load(open(run / "eval.json"))
    for t in ("bbox", "segm"):
        assert set(ev["metrics"][t]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl", "per_class"}
        assert len(ev["metrics"][t]["per_class"]) == 10
    assert "| box |" in (run / "eval.md").read_text()
    assert (run / "last.safetensors").is_file() and (run / "last.state.safetensors").is_file()
    assert len(list((run / "predictions").glob("*.png"))) == 1


@needs_fmnist
def test_resume_continues_from_the_checkpoint(trained, tmp_path):
    root, run = trained
    import shutil

    run2 = tmp_path / "run2"
    shutil.copytree(run, run2)
    steps_before = max(r["step"] for r in _records(run2))
    rc = main(["detect", "train", *_sets(tiny_config_overrides(root / "mosaic", run2, epochs=4)), "--resume", "auto"])
    assert rc == 0
    recs = _records(run2)
    epochs = [r for r in recs if r["phase"] == "train_epoch"]
    assert len(epochs) == 4  # 3 kept from the first run + 1 new one
    new_steps = [r["step"] for r in recs if r["phase"] == "train" and r["step"] > steps_before]
    assert new_steps and min(new_steps) == steps_before + 1  # continued, did not restart


@needs_fmnist
def test_eval_and_predict_commands(trained, tmp_path, capsys):
    root, run = trained
    out = tmp_path / "ev"
    assert main(["detect", "eval", str(run), "--out", str(out), "--backend", "faster_coco_eval"]) == 0
    ev = json.load(open(out / "eval.json"))
    train_ev = json.load(open(run / "eval.json"))
    # the same checkpoint (last == final model) gives the same numbers through the other backend
    assert ev["metrics"]["bbox"]["AP"] == pytest.approx(train_ev["metrics"]["bbox"]["AP"], abs=1e-9)
    img = os.path.join(root / "mosaic", "val", "000000.png")
    pred = tmp_path / "pred"
    assert main(["detect", "predict", str(run / "last.safetensors"), img, "--out", str(pred), "--score-threshold", "0.0",
                 "--scale", "2"]) == 0
    from PIL import Image

    im = Image.open(pred / "000000.png")
    assert im.size == (192, 192)
    recs = json.load(open(pred / "predictions.json"))
    assert recs[0]["image"] == img and isinstance(recs[0]["detections"], list)
    assert main(["detect", "predict", str(run), "no-such.png", "--out", str(pred)]) == 2


def test_bad_annotations_stop_before_training(tmp_path, capsys):
    from PIL import Image

    (tmp_path / "img").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "img" / "a.png")
    data = {"images": [{"id": 1, "file_name": "a.png", "width": 32, "height": 32},
                       {"id": 2, "file_name": "lost.png", "width": 32, "height": 32}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [1, 1, 10, 10]},
                            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [1, 1, 0, 10]}],
            "categories": [{"id": 1, "name": "a"}]}
    (tmp_path / "ann.json").write_text(json.dumps(data))
    run = tmp_path / "run"
    sets = tiny_config_overrides(tmp_path, run) + [
        "data.dataset=coco", f"data.train_images={tmp_path / 'img'}", f"data.train_ann={tmp_path / 'ann.json'}",
        "data.strict=true", "model.kind=fasterrcnn"]
    rc = main(["detect", "train", *_sets(sets)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "1 x annotations with an unknown category_id" in err and "1 x zero-area boxes" in err
    assert "1 x image files not found" in err
    assert not (run / "last.safetensors").exists()


@needs_fmnist
def test_two_process_gloo_ddp(tmp_path):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "botnet.cli",
           "detect", "train", *_sets(tiny_config_overrides(tmp_path / "mosaic", run, epochs=1, num_train=8, num_val=4)),
           "--device", "cpu", "--set", "model.norm=sync"]  # sync BN falls back to BN on CPU
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    ev = json.load(open(run / "eval.json"))
    assert ev["world_size"] == 2
    assert ev["num_val_images"] == 4
    assert ev["metrics"]["bbox"]["num_images"] == 4  # both ranks' shards gathered for COCOeval
    assert (run / "last.safetensors").is_file()


@needs_fmnist
def test_resuming_a_finished_run_changes_nothing(trained, tmp_path, capsys):
    root, run = trained
    import shutil

    run2 = tmp_path / "done"
    shutil.copytree(run, run2)
    snapshot = {p.name: p.read_bytes() for p in run2.iterdir() if p.is_file()}
    rc = main(["detect", "train", *_sets(tiny_config_overrides(root / "mosaic", run2, epochs=3)), "--resume", "auto"])
    assert rc == 0 and "already finished" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in run2.iterdir() if p.is_file()} == snapshot


def _without_annotations(src, dst):
    data = json.load(open(src))
    data["annotations"] = []
    with open(dst, "w") as f:
        json.dump(data, f)
    return dst


@needs_fmnist
def test_empty_annotation_lists_warn_in_training_and_stop_evaluation(trained, tmp_path, capsys):
    root, run = trained
    m = root / "mosaic"
    ann_tr = _without_annotations(m / "instances_train.json", tmp_path / "train.json")
    ann_va = _without_annotations(m / "instances_val.json", tmp_path / "val.json")
    # evaluation against nothing: a clear message, no all-null AP file
    capsys.readouterr()
    rc = main(["detect", "eval", str(run), "--images", str(m / "val"), "--ann", str(ann_va), "--out", str(tmp_path / "ev")])
    err = capsys.readouterr().err
    assert rc == 2 and str(ann_va) in err and "no (usable) annotations" in err
    assert not (tmp_path / "ev" / "eval.json").exists()
    # training on it still runs (background-only learning is legal) but says so before the first step
    sets = tiny_config_overrides(m, tmp_path / "run", epochs=1) + [
        "data.dataset=coco", f"data.train_images={m / 'train'}", f"data.train_ann={ann_tr}",
        f"data.val_images={m / 'val'}", f"data.val_ann={ann_va}", "model.kind=fasterrcnn", "eval.num_draw=0"]
    rc = main(["detect", "train", *_sets(sets)])
    err = capsys.readouterr().err
    assert rc == 0
    assert "training set has no annotations" in err and "validation set has no annotations" in err


@needs_fmnist
def test_training_set_smaller_than_a_batch_is_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    sets = tiny_config_overrides(tmp_path / "mosaic", run, epochs=1, num_train=3, num_val=2)  # batch 4
    rc = main(["detect", "train", *_sets(sets)])
    err = capsys.readouterr().err  # the mosaic generator's progress bar may come first
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert rc == 2 and "Traceback" not in err and len(errors) == 1, err
    assert "3 usable images, fewer than one batch" in errors[0]
    assert not (run / "last.safetensors").exists()


@needs_fmnist
def test_nan_loss_ends_detection_like_classification(tmp_path, monkeypatch, capsys):
    # one engine, one behaviour: exit code 3, a message naming the step, summary.json says why
    from botnet.detection.task import DetectionTask

    orig = DetectionTask.train_step
    calls = {"n": 0}

    def nan_at_step_2(self, *a, **k):
        out = orig(self, *a, **k)
        calls["n"] += 1
        if calls["n"] == 2:
            out.losses["loss"] = out.losses["loss"] * float("nan")
        return out

    monkeypatch.setattr(DetectionTask, "train_step", nan_at_step_2)
    run = tmp_path / "run"
    rc = main(["detect", "train", *_sets(tiny_config_overrides(tmp_path / "mosaic", run, epochs=1, num_train=12))])
    err = capsys.readouterr().err
    assert rc == 3 and "loss is nan at step 2" in err and "Traceback" not in err
    assert json.load(open(run / "summary.json"))["status"] == "nonfinite_loss"


def test_both_training_commands_refuse_a_bad_key_the_same_way(capsys):
    msgs = []
    for cmd in (["train"], ["detect", "train"]):
        assert main([*cmd, "--set", "optim.lrr=1"]) == 2
        msgs.append(capsys.readouterr().err.strip())
    assert msgs[0].startswith("error: unknown config key 'optim.lrr' (known in optim: ")
    assert msgs[0] == msgs[1]  # the same section, the same keys, the same words
