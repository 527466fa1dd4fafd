"""botnet publish on the demo recipe: timm and botnet load the folder with the trained logits and the
run's preprocessing; every command takes the folder; bad folders are one line and exit 2."""
import json
import re

import pytest
import torch
from PIL import Image

import botnet
from botnet.cli import main
from botnet.data.fashion_mnist import MEAN as FMNIST_MEAN, STD as FMNIST_STD, load_fashion_mnist
from botnet.engine.rebuild import load_model


@pytest.fixture(scope="module")
def published(demo_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("pub") / "botnet-mini-fmnist"
    assert main(["publish", str(demo_run), str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    x, _ = load_fashion_mnist("test")
    paths = []
    for i in range(2):
        Image.fromarray(x[i]).save(d / f"{i}.png")
        paths.append(d / f"{i}.png")
    return paths


def _x():
    return torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def test_the_folder_has_timm_fields_and_every_override(published, demo_run):
    cfg = json.loads((published / "config.json").read_text())
    summary = json.loads((demo_run / "summary.json").read_text())
    assert cfg["architecture"] == "botnet_mini" and cfg["num_classes"] == 10 and cfg["num_features"] == 512
    assert cfg["label_names"][0] == "T-shirt/top" and len(cfg["label_names"]) == 10
    for k, v in summary["model_kwargs"].items():  # the run's own record of its model options
        assert cfg["model_args"][k] == v, k
    recipe = json.loads((demo_run / "config.json").read_text())["model"]
    assert cfg["model_args"]["strides"] == recipe["kwargs"]["strides"] and cfg["model_args"]["img_size"] == 28
    pc = cfg["pretrained_cfg"]
    assert pc["input_size"] == [1, 28, 28] and pc["crop_pct"] == 1.0 and pc["interpolation"] == "bilinear"
    assert pc["mean"] == pytest.approx(list(FMNIST_MEAN)) and pc["std"] == pytest.approx(list(FMNIST_STD))
    assert sorted(p.name for p in published.iterdir()) == ["README.md", "config.json", "model.safetensors"]


def test_timm_and_botnet_give_the_trained_logits_and_preprocessing(published, demo_run):
    import timm

    trained, _ = load_model(demo_run)
    with torch.no_grad():
        ref = trained(_x())
        via_timm = timm.create_model(f"local-dir:{published}", pretrained=True).eval()
        via_botnet = botnet.create_model("botnet_mini", pretrained=str(published)).eval()
        via_prefix = botnet.create_model(f"local-dir:{published}").eval()
        via_load, _ = load_model(published)
        for m in (via_timm, via_botnet, via_prefix, via_load):
            assert (m(_x()) - ref).abs().max().item() <= 1e-6
    want = {"input_size": (1, 28, 28), "interpolation": "bilinear", "mean": FMNIST_MEAN, "std": FMNIST_STD,
            "crop_pct": 1.0, "crop_mode": "center"}
    for m in (via_timm, via_botnet, via_load):
        assert timm.data.resolve_data_config({}, model=m) == want  # floats survive JSON exactly
    assert botnet.create_model("botnet_mini", pretrained=str(published), num_classes=3).fc.out_features == 3


def test_input_size_is_the_size_the_run_fed_the_model(bot50_classifier):
    import timm

    cfg = json.loads((bot50_classifier / "config.json").read_text())
    assert cfg["model_args"]["img_size"] == 28 and cfg["pretrained_cfg"]["input_size"] == [1, 32, 32]
    for m in (timm.create_model(f"local-dir:{bot50_classifier}", pretrained=True), load_model(bot50_classifier)[0]):
        assert timm.data.resolve_data_config({}, model=m)["input_size"] == (1, 32, 32)
        assert m.layer4[0].mhsa.rel_h.shape[0] == 3  # tables still built for 28 px (c5 input 2x2)
    bigger = botnet.create_model("botnet50", pretrained=str(bot50_classifier), img_size=64)
    assert timm.data.resolve_data_config({}, model=bigger)["input_size"] == (1, 64, 64)


def test_timm_transform_matches_the_runs_own(published, images):
    import timm

    from botnet.classification.predict import load_for_inference

    model = timm.create_model(f"local-dir:{published}", pretrained=True)
    ours = load_for_inference(published)[1]
    theirs = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    img = Image.open(images[0]).convert("L")
    assert (ours(img) - theirs(img)).abs().max().item() <= 1e-6


def test_card_has_the_measured_table_command_and_citation(published, demo_run, capsys):
    card = (published / "README.md").read_text()
    capsys.readouterr()
    assert main(["eval", str(published), "--no-progress", "--tta", "none"]) == 0
    top1 = re.search(r"top-1 ([\d.]+)%", capsys.readouterr().out).group(1)
    assert f"| top-1 accuracy (%) | {top1} |" in card
    assert main(["eval", str(published), "--no-progress"]) == 0  # the recipe's flip averaging, also in the card
    top1 = re.search(r"top-1 ([\d.]+)%", capsys.readouterr().out).group(1)
    assert f"| top-1 accuracy, each image averaged with its mirror image (%) | {top1} |" in card
    rows = re.findall(r"^\| (.+?) \| (\d+) \| ([\d.]+) \|$", card, re.M)
    assert [r[0] for r in rows] == json.loads((published / "config.json").read_text())["label_names"]
    assert sum(int(r[1]) for r in rows) == 64  # every validation image, counted once
    n_params = sum(p.numel() for p in load_model(demo_run)[0].parameters())
    assert f"| parameters | {n_params:,} |" in card and "GMACs" in card
    assert "botnet train --config fashion-mnist --max-steps 4" in card and "strides:" in card and "arXiv:2101.11605" in card
    assert card.startswith("---\nlicense: apache-2.0") and "library_name: timm" in card


def test_ema_flag_publishes_the_ema_weights(demo_run, tmp_path):
    from safetensors.torch import load_file

    assert main(["publish", str(demo_run), str(tmp_path / "ema"), "--weights", "ema", "--no-eval"]) == 0
    ema, _ = load_model(demo_run / "last.safetensors", use_ema=True)
    raw, _ = load_model(demo_run / "last.safetensors")
    got = load_file(str(tmp_path / "ema" / "model.safetensors"))
    assert all(torch.equal(got[k], v) for k, v in ema.state_dict().items())
    assert any(not torch.equal(got[k], v) for k, v in raw.state_dict().items())
    assert json.loads((tmp_path / "ema" / "config.json").read_text())["botnet"]["weights"] == "ema"


def test_commands_take_the_folder(published, images, tmp_path, capsys):
    assert main(["predict", *map(str, images), "--checkpoint", str(published)]) == 0
    assert "2 image(s) classified" in capsys.readouterr().out
    assert main(["attention", str(images[0]), "--checkpoint", str(published), "-o", str(tmp_path / "att")]) == 0
    assert (tmp_path / "att" / "0_attention.png").stat().st_size > 1000
    assert main(["export", "--format", "torchscript", "--output", str(tmp_path / "m.ts"),
                 "--checkpoint", str(published)]) == 0
    assert "max |exported - eager| = 0" in capsys.readouterr().out
    assert main(["eval", str(published), "--ema"]) == 2
    assert "holds one set of weights" in capsys.readouterr().err


def test_init_weights_reads_the_folder(published, demo_run):
    from botnet.engine import checkpoint as ckpt

    args = json.loads((published / "config.json").read_text())["model_args"]
    model = botnet.create_model("botnet_mini", **args)
    ckpt.load_weights(model, published)  # what --init-weights does, strictly
    trained, _ = load_model(demo_run)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), trained.state_dict().values()))
    report = botnet.load_resnet_weights(botnet.create_model("botnet_mini", num_classes=0, img_size=56), published,
                                        verbose=False)
    assert not report.fresh and not report.shape_mismatch and set(report.unused) == {"fc.weight", "fc.bias"}
    assert {n for n, *_ in report.adapted} == {"conv1.weight"} | {
        f"layer4.{i}.mhsa.{t}" for i in (0, 1) for t in ("rel_h", "rel_w")}


def test_hub_ids_offline_are_one_line(capsys):
    assert main(["predict", "x.png", "--checkpoint", "hf-hub:someone/botnet-demo"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "hf-hub:someone/botnet-demo" in err and "HF_HUB_OFFLINE" in err
    assert main(["eval", "hf-hub:someone/botnet-demo"]) == 2
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err
    with pytest.raises(botnet.hub.PublishedModelError, match="hf-hub:someone/botnet-demo"):
        botnet.create_model("hf-hub:someone/botnet-demo")


def _broken(published, tmp_path, how):
    import shutil

    bad = tmp_path / how
    shutil.copytree(published, bad)
    cfg = json.loads((bad / "config.json").read_text())
    if how == "no-config":
        (bad / "config.json").unlink()
    elif how == "no-card":
        (bad / "README.md").unlink()
    elif how == "unknown-arch":
        cfg["architecture"] = "botnet_huge"
        (bad / "config.json").write_text(json.dumps(cfg))
    elif how == "wrong-weights":
        cfg["num_classes"] = 7
        (bad / "config.json").write_text(json.dumps(cfg))
    elif how == "bad-json":
        (bad / "config.json").write_text("{not json")
    return bad


@pytest.mark.parametrize("how, named, what", [
    ("no-config", "config.json", "is missing"), ("no-card", "README.md", "model card"),
    ("unknown-arch", "config.json", "botnet_huge"), ("wrong-weights", "model.safetensors", "does not match"),
    ("bad-json", "config.json", "not valid JSON")])
def test_bad_folders_are_one_line_exit_2(published, images, tmp_path, capsys, how, named, what):
    bad = _broken(published, tmp_path, how)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in bad.iterdir())
    assert main(["predict", str(images[0]), "--checkpoint", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(bad / named) in err and what in err, err
    with pytest.raises(botnet.hub.PublishedModelError, match=re.escape(named)):
        botnet.create_model(None, pretrained=str(bad))
    assert sorted((p.name, p.stat().st_mtime_ns) for p in bad.iterdir()) == before


def test_publish_refuses_before_writing_and_never_half_writes(demo_run, published, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["publish", str(demo_run), str(out), "--no-eval"]) == 2
    assert "not empty" in capsys.readouterr().err and [p.name for p in out.iterdir()] == ["keep.txt"]
    assert main(["publish", str(tmp_path / "nope"), str(tmp_path / "o2")]) == 2
    assert main(["publish", str(published), str(tmp_path / "o3")]) == 2
    assert "already a published model folder" in capsys.readouterr().err

    import botnet.hub.card as card

    def boom(info):
        raise RuntimeError("disk full")

    monkeypatch.setattr(card, "classification_card", boom)
    with pytest.raises(RuntimeError):
        main(["publish", str(demo_run), str(tmp_path / "new"), "--no-eval"])
    assert main(["publish", str(demo_run), str(out), "--no-eval", "--force"]) == 2  # not an earlier publish
    assert [p.name for p in out.iterdir()] == ["keep.txt"]  # the old folder is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder left
    monkeypatch.undo()
    assert main(["publish", str(demo_run), str(tmp_path / "new"), "--no-eval"]) == 0
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["README.md", "config.json", "model.safetensors"]
