"""Damaged structured files and config shapes through `botnet ...` (in-process): exit code 2, one
line naming the file and the field, no traceback, before any training step."""
import json
import shutil

import pytest
import torch

from helpers import assert_one_line_error, rewrite_safetensors, run, set_extra
from test_bad_input import TINY, needs_data

DEEP = "[" * 5000 + "]" * 5000


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """One AdamW run stopped after its first step (resumable), and its published folder."""
    from botnet.cli import main  # capsys is function-scoped: the module fixture calls main directly

    d = tmp_path_factory.mktemp("files")
    run_dir, pub = d / "run", d / "pub"
    assert main([str(a) for a in ["train", "--epochs", "2", "--max-steps", "1", "--opt", "adamw",
                                  "--output", run_dir, *TINY]]) == 0
    assert main(["publish", str(run_dir), str(pub), "--no-eval"]) == 0
    return {"run": run_dir, "pub": pub}


@pytest.fixture
def copy(made, tmp_path):
    def fn(which):
        dst = tmp_path / which
        shutil.copytree(made[which], dst)
        return dst
    return fn


@needs_data
@pytest.mark.parametrize("key, raw, needle", [
    ("class_names", "7", "class_names is 7; expected a list"),
    ("model_kwargs", '{"a": ' + DEEP + "}", "(metadata field model_kwargs) is nested 5001 levels deep"),
    ("extra", json.dumps({"best": "x"}), "extra.best is 'x'; expected a mapping"),
])
def test_eval_on_damaged_metadata(copy, capsys, key, raw, needle):
    r = copy("run")
    rewrite_safetensors(r / "best.safetensors", meta=lambda md: {**md, key: raw})
    rc, _, err = run(capsys, ["eval", r, "--no-progress"])
    assert_one_line_error(rc, err, str(r / "best.safetensors"), needle)


@needs_data
def test_publish_on_damaged_metadata(copy, capsys, tmp_path):
    r = copy("run")
    rewrite_safetensors(r / "best.safetensors", meta=set_extra("best", "x"))
    rc, _, err = run(capsys, ["publish", r, tmp_path / "out", "--no-eval"])
    assert_one_line_error(rc, err, str(r / "best.safetensors"), "extra.best")
    assert not (tmp_path / "out").exists()


@needs_data
@pytest.mark.parametrize("damage, needle", [
    (lambda c: (c / "config.json").write_text('{"architecture": "botnet_mini", "x": ' + DEEP + "}"),
     "config.json is nested 5001 levels deep"),
    (lambda c: (c / "config.json").write_text(json.dumps({**json.loads((c / "config.json").read_text()),
                                                          "label_names": 7})), "config.json: label_names is 7"),
    (lambda c: rewrite_safetensors(c / "model.safetensors", tensors=lambda ts: {
        k: v.to(torch.int8) if v.is_floating_point() else v for k, v in ts.items()}), "(checkpoint int8 vs model float32)"),
])
def test_predict_with_damaged_published_folder(copy, capsys, tmp_path, damage, needle):
    from PIL import Image

    pub = copy("pub")
    damage(pub)
    img = tmp_path / "x.png"
    Image.new("L", (28, 28), 128).save(img)
    rc, out, err = run(capsys, ["predict", img, "--checkpoint", pub])
    assert_one_line_error(rc, err, str(pub), needle)
    assert "10.00%" not in out


@needs_data
@pytest.mark.parametrize("where, change, needle", [
    ("weights", set_extra("train_seconds", "abc"), "last.safetensors: extra.train_seconds is 'abc'"),
    ("state", lambda sk: sk.update(step=-5), "last.state.safetensors: step is -5; expected an integer >= 0"),
    ("state", lambda sk: sk["extra"].update(batch_in_epoch=10 ** 9), "extra.batch_in_epoch is 1000000000, more than"),
    ("state", lambda sk: sk.update(rng={"python": 5}), "rng.python is 5"),
    ("state", lambda sk: sk["optimizer"].update(param_groups=[]), "optimizer.param_groups is []"),
    ("state", lambda sk: sk["extra"].update(deep=json.loads("[" * 200 + "]" * 200)), "nested 202 levels deep"),
])
def test_resume_from_damaged_checkpoint(copy, capsys, where, change, needle):
    r = copy("run")
    if where == "weights":
        rewrite_safetensors(r / "last.safetensors", meta=change)
    else:
        rewrite_safetensors(r / "last.state.safetensors", skeleton=change)
    before = (r / "metrics.jsonl").read_bytes()
    rc, out, err = run(capsys, ["train", "--resume", r, "--output", r, *TINY])
    assert_one_line_error(rc, err, needle)
    assert "completed" not in out and (r / "metrics.jsonl").read_bytes() == before  # not a single step


@needs_data
def test_resume_with_another_optimizer_names_the_file_and_the_option(copy, capsys):
    r = copy("run")
    rc, _, err = run(capsys, ["train", "--resume", r, "--output", r, "--opt", "sgd", *TINY])
    assert_one_line_error(rc, err, str(r / "last.state.safetensors"), "another kind of optimizer",
                          "resume with --opt adamw")
    rc, out, err = run(capsys, ["train", "--resume", r, "--output", r, "--opt", "adamw", *TINY])
    assert rc == 0, err


@pytest.mark.parametrize("args, needle", [
    (["train", "--set", "train=5"], "train = 5 is invalid: it must be a mapping of train.* keys"),
    (["train", "--set", "data=null"], "data = None is invalid: it must be a mapping of data.* keys"),
    (["train", "--set", "data.interpolation=nosuch"], "data.interpolation = 'nosuch' is invalid: use one of"),
    (["train", "--set", "data.mean=[0.5]", "--set", "data.std=[0]"], "data.std = [0] is invalid: data.std[0] is 0"),
    (["train", "--set", "data.std=[0.3]"], "data.std is set but data.mean is not"),
    (["train", "--set", "data.mean=[0.5, 0.5]", "--set", "data.std=[1, 1]"], "1 or 3 values"),
    (["train", "--set", "train.ema=maybe"], "train.ema = 'maybe' is invalid"),
    (["detect", "train", "--set", "eval=5"], "eval = 5 is invalid: it must be a mapping"),
    (["detect", "train", "--set", "data.mosaic=null"], "data.mosaic = None is invalid"),
])
def test_config_shape_errors_name_the_key(capsys, tmp_path, args, needle):
    small = ["--max-steps", "1", *TINY] if args[0] == "train" else ["--no-progress"]  # short if it were accepted
    rc, _, err = run(capsys, [*args, "--output", tmp_path / "r", *small])
    assert_one_line_error(rc, err, needle)
    assert not (tmp_path / "r").exists()


@needs_data
def test_resume_past_the_end_of_an_epoch_of_this_run_is_one_line(capsys, tmp_path):
    """A run stopped 3 batches into an epoch of 4 steps; with a batch twice as large an epoch has 2
    steps, so that position is past its end: a line, not an epoch silently skipped."""
    from botnet.cli import main

    r = tmp_path / "run"
    args = [*TINY, "--limit-train", "128", "--epochs", "2", "--output", r]
    assert main([str(a) for a in ["train", *args, "--max-steps", "3"]]) == 0
    before = (r / "metrics.jsonl").read_bytes()
    rc, _, err = run(capsys, ["train", "--resume", r, *args, "--batch-size", "64"])
    assert_one_line_error(rc, err, str(r / "last.state.safetensors"), "extra.batch_in_epoch is 3",
                          "an epoch of this run has 2 steps")
    assert (r / "metrics.jsonl").read_bytes() == before
