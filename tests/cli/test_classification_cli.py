"""Classification commands end to end through botnet.cli.main: folders of real images, bad input, demo checkpoints."""
import json

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file

from botnet.cli import build_parser, main
from botnet.data import fashion_mnist as fm
from helpers import assert_one_line_error, run as run_cli

HAVE_FMNIST = fm._complete(fm.SYSTEM_DIR) is not None
needs_data = pytest.mark.skipif(not HAVE_FMNIST, reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
SMALL = ["--set", "model.kwargs={widths: [8, 16, 16, 32], stem_width: 16}", "--no-progress", "--set", "train.log_every=1",
         "--img-size", "28", "--set", "data.scale=[0.6,1.0]", "--threads", "1"]
CLASSES = {1: "trouser", 8: "bag", 7: "sneaker"}


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    """ROOT/train/CLASS/*.png and ROOT/val/CLASS/*.png from real Fashion-MNIST images, in mixed modes."""
    if not HAVE_FMNIST:
        pytest.skip("Fashion-MNIST not installed")
    root = tmp_path_factory.mktemp("folder")
    x, y = fm.load_fashion_mnist("test")
    for label, name in CLASSES.items():
        idx = np.flatnonzero(y == label)
        for split, sel in (("train", idx[:48]), ("val", idx[48:60])):
            d = root / split / name
            d.mkdir(parents=True)
            for j, i in enumerate(sel):
                img = Image.fromarray(x[i])
                if j % 4 == 1:
                    img = img.convert("RGB")
                elif j % 4 == 2:
                    img = img.convert("RGBA")
                    img.putalpha(255)
                img.save(d / f"{i}.png")
    return root


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_folder_training_end_to_end_loss_goes_down(image_root, tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(["train", "--dataset", "folder", "--data-dir", str(image_root), "--batch-size", "16", "--epochs", "4",
               "--lr", "0.05", "--warmup-epochs", "0", "--output", str(run), *SMALL])
    assert rc == 0, capsys.readouterr().err
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    ep = [r["train_loss"] for r in recs if r["phase"] == "train_epoch"]
    assert len(ep) == 4 and ep[-1] < 0.8 * ep[0], ep
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final"]["raw"]["n"] == 36 and summary["final"]["raw"]["top1"] > 50.0
    for f in ("loss.png", "accuracy.png", "confusion_matrix.png", "metrics.csv", "best.safetensors", "last.state.safetensors"):
        assert (run / f).is_file(), f
    assert list((run / "tb").iterdir())
    capsys.readouterr()
    assert main(["eval", str(run), "--no-progress"]) == 0
    assert "top-1" in capsys.readouterr().out
    val_img = sorted((image_root / "val" / "bag").iterdir())[0]
    assert main(["predict", str(val_img), "--checkpoint", str(run / "best.safetensors")]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in CLASSES.values())  # 3 classes -> all three listed with probabilities


def test_corrupt_image_is_named_or_skipped(image_root, tmp_path, capsys):
    root = _copy(image_root, tmp_path / "data")
    (root / "train" / "bag" / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    args = ["train", "--dataset", "folder", "--data-dir", str(root), "--batch-size", "16", "--epochs", "1",
            "--eval-every", "0", "--no-plots", *SMALL]
    rc = main(args + ["--output", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert rc == 2 and "zz_broken.png" in err and "--skip-bad" in err
    assert main(args + ["--output", str(tmp_path / "b"), "--skip-bad"]) == 0
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["skipped_train_files"] == 1 and summary["skipped_train_examples"][0].endswith("zz_broken.png")


def test_layout_problems_reported_before_training(image_root, tmp_path, capsys):
    root = _copy(image_root, tmp_path / "data")
    (root / "train" / "coat").mkdir()
    rc = main(["train", "--dataset", "folder", "--data-dir", str(root), "--output", str(tmp_path / "r"), *SMALL])
    err = capsys.readouterr().err
    assert rc == 2 and "empty class folder" in err and "coat" in err
    assert not (tmp_path / "r").exists()  # nothing started
    import shutil

    shutil.rmtree(root / "val")
    (root / "train" / "coat").rmdir()
    rc = main(["train", "--dataset", "folder", "--data-dir", str(root), "--output", str(tmp_path / "r"), *SMALL])
    assert rc == 2 and "missing split folder" in capsys.readouterr().err


@needs_data
def test_demo_checkpoint_works_with_eval_predict_and_other_arch_is_refused(tmp_path, capsys):
    run = tmp_path / "demo"
    rc = main(["demo", "--limit-train", "512", "--limit-val", "256", "--epochs", "1", "--time-budget", "300",
               "--attention-images", "1", "--output", str(run), "--no-progress", "--threads", "1"])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final"]["raw"]["n"] == 256 and summary["demo_wall_seconds"] > 0
    out = capsys.readouterr().out
    assert f"after {summary['epochs']:.2f} epochs" in out and "averaged with its mirror image" in out  # the recipe's TTA
    assert summary["command"].startswith("botnet demo --limit-train 512") and "logical cores" in summary["hardware"]
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["amp"] == "none" and cfg["data"]["num_workers"] == 0  # auto, resolved on the CPU
    mk = summary["model_kwargs"]  # what botnet.create_model("botnet_mini", ...) was called with
    assert summary["arch"] == "botnet_mini" and (mk["num_classes"], mk["in_chans"], mk["img_size"]) == (10, 1, 28)
    assert list((run / "attention").glob("*.png")) and (run / "confusion_matrix.png").is_file()
    samples = sorted((run / "samples").glob("*.png"))
    capsys.readouterr()
    assert main(["eval", str(run / "best.safetensors"), "--no-progress", "--limit", "200"]) == 0
    assert "on 200 images" in capsys.readouterr().out
    assert main(["eval", str(run), "--no-progress", "--limit", "200", "--tta", "hflip", "--json", str(tmp_path / "e.json")]) == 0
    assert "(tta hflip)" in capsys.readouterr().out
    assert json.loads((tmp_path / "e.json").read_text())["raw"]["tta"] == "hflip"
    assert main(["predict", *map(str, samples), "--checkpoint", str(run)]) == 0
    out = capsys.readouterr().out
    assert out.count("%") == 5 * len(samples) and out.rstrip().endswith("(one view: --tta none)")
    assert main(["predict", str(samples[0]), "--checkpoint", str(run), "--tta", "hflip", "--topk", "2",
                 "--json", str(tmp_path / "p.json")]) == 0
    flipped = capsys.readouterr().out
    assert flipped.count("%") == 2 and "each image averaged with its mirror image" in flipped
    assert json.loads((tmp_path / "p.json").read_text())["tta"] == "hflip"
    # a mistyped path: one line naming it, or, with --skip-bad, skipped and listed like an unreadable file
    missing = tmp_path / "no-such.png"
    rc, _, err = run_cli(capsys, ["predict", samples[0], missing, "--checkpoint", run])
    assert_one_line_error(rc, err, f"cannot read image file {missing}: no such file")
    assert main(["predict", str(samples[0]), str(missing), "--checkpoint", str(run), "--skip-bad"]) == 0
    said = capsys.readouterr()
    assert f"skipped unreadable file {missing}: no such file" in said.err and "1 skipped" in said.out
    rc, _, err = run_cli(capsys, ["attention", missing, "--checkpoint", run, "--out", tmp_path / "att"])
    assert_one_line_error(rc, err, f"cannot read image file {missing}: no such file")
    import re

    listed = re.findall(r"^\s+\d\. (.+?)\s+(\d+\.\d+)%$", out, flags=re.M)
    assert len(listed) == 5 and {c for c, _ in listed} <= set(fm.CLASSES)  # top-5 with the data set's class names
    # the recipe averages views in `botnet eval` (eval_tta: hflip); predict and attention both show one view
    # unless told otherwise, so one image reads the same in both, and each says which
    for tta, (cls, pct) in (("none", listed[0]), ("hflip", re.findall(r"^\s+1\. (.+?)\s+(\d+\.\d+)%$", flipped,
                                                                       flags=re.M)[0])):
        assert main(["attention", str(samples[0]), "--checkpoint", str(run), "--out", str(tmp_path / "att"),
                     "--tta", tta]) == 0
        said = capsys.readouterr().out.strip()
        assert said.startswith(str(tmp_path / "att" / f"{samples[0].stem}_attention.png"))
        assert re.search(r"predicted (.+) (\d+\.\d+)% \((one view|each image averaged)", said).groups()[:2] == (cls, pct)
    assert (tmp_path / "att" / f"{samples[0].stem}_attention.png").is_file()
    # a checkpoint of another architecture is refused, with the mismatching keys
    rc = main(["train", "--config", "fashion-mnist", "--init-weights", str(run / "best.safetensors"),
               "--set", "model.kwargs={layers: [1, 1, 1, 2]}",
               "--limit-train", "256", "--limit-val", "64", "--output", str(tmp_path / "x"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "does not match the model" in err and "layer3.1." in err
    rc = main(["train", "--config", "fashion-mnist", "--init-weights", str(run), "--max-steps", "1", "--limit-train", "256", "--limit-val", "64",
               "--output", str(tmp_path / "y"), "--no-progress", "--no-plots"])
    n = len(load_file(str(run / "best.safetensors")))
    assert rc == 0 and f"all {n} tensors loaded from {run}" in capsys.readouterr().out


def test_every_option_of_every_classification_command_is_explained():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name in ("train", "eval", "predict", "demo", "attention"):
        p = sub.choices[name]
        assert p.description
        for action in p._actions:
            if action.option_strings and action.dest != "help":
                assert action.help and len(action.help) > 10, (name, action.option_strings)
