"""A published classifier starts a detector (every backbone tensor transferred); the detection run is
published with its AP card and loads back as the same torchvision model, by the CLI and in one line."""
import json
import re

import pytest
import torch

import botnet
import botnet.hub
from botnet.cli import main
from botnet.engine.rebuild import load_model
from hub_helpers import detection_overrides


@pytest.fixture(scope="module")
def det_run(bot50_classifier, tmp_path_factory):
    root = tmp_path_factory.mktemp("hub-det")
    run = root / "run"
    assert main(["detect", "train", *detection_overrides(root / "mosaic", run, bot50_classifier)]) == 0
    return root, run


@pytest.fixture(scope="module")
def det_published(det_run):
    root, run = det_run
    assert main(["publish", str(run), str(root / "published")]) == 0
    return root / "published"


def test_every_backbone_tensor_comes_from_the_published_classifier(bot50_classifier, det_run):
    from safetensors.torch import load_file

    cls = load_file(str(bot50_classifier / "model.safetensors"))
    backbone = botnet.create_model("botnet50", num_classes=0, img_size=96, layers=(1, 1, 1, 3),
                                   widths=(8, 16, 32, 64), stem_width=8)
    report = botnet.load_resnet_weights(backbone, bot50_classifier, verbose=False)
    assert not report.fresh and not report.shape_mismatch and len(report.transferred) == len(backbone.state_dict())
    assert {n for n, *_ in report.adapted} == {"conv1.weight"} | {
        f"layer4.{i}.mhsa.{t}" for i in range(3) for t in ("rel_h", "rel_w")}
    # in the trained detector the frozen stem and c2 (trainable_layers=3 with weights) are the classifier's
    det = load_model(det_run[1], task="detection")[0].state_dict()
    assert torch.allclose(det["backbone.body.conv1.weight"], cls["conv1.weight"].repeat(1, 3, 1, 1) / 3)
    for k in ("layer1.0.conv2.weight", "layer1.0.bn2.running_var", "bn1.weight"):
        assert torch.equal(det[f"backbone.body.{k}"], cls[k]), k


def test_detection_folder_config_and_card(det_published, det_run):
    cfg = json.loads((det_published / "config.json").read_text())
    kw = json.loads((det_run[1] / "summary.json").read_text())["model_kwargs"]
    assert cfg["architecture"] == "detector:maskrcnn_botnet50_fpn" and cfg["botnet"]["task"] == "detection"
    assert {k: v for k, v in cfg["botnet"]["model_kwargs"].items()} == kw
    assert cfg["label_names"][0] == "__background__" and len(cfg["label_names"]) == cfg["num_classes"] == 11
    card = (det_published / "README.md").read_text()
    ev = json.loads((det_run[1] / "eval.json").read_text())["metrics"]
    box = f"{ev['bbox']['AP']:.1f}"  # eval.json and the card both in percent
    assert re.search(rf"^\| box \| {re.escape(box)} \|", card, re.M) and re.search(r"^\| mask \| ", card, re.M)
    assert all(f"| {c} |" in card for c in cfg["label_names"][1:])  # per-class AP rows
    assert "botnet detect train --set" in card and "arXiv:2101.11605" in card


def test_one_line_load_and_the_cli_give_the_trained_detector(det_published, det_run, tmp_path, capsys):
    from torchvision.models.detection import MaskRCNN

    img = sorted((det_run[0] / "mosaic" / "val").glob("*.png"))[0]
    detector = botnet.hub.load_detector(det_published)
    trained = load_model(det_run[1], task="detection")[0]
    assert isinstance(detector, MaskRCNN) and not detector.training
    from PIL import Image
    from torchvision.transforms.functional import to_tensor

    x = to_tensor(Image.open(img).convert("RGB"))
    with torch.no_grad():
        a, b = detector([x])[0], trained([x])[0]
    assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])
    assert main(["detect", "predict", str(det_published), str(img), "--output", str(tmp_path / "pred")]) == 0
    assert (tmp_path / "pred" / "predictions.json").is_file() and (tmp_path / "pred" / img.name).is_file()
    with pytest.raises(botnet.hub.PublishedModelError, match="detection model"):
        botnet.create_model(None, pretrained=str(det_published))
    assert main(["predict", str(img), "--checkpoint", str(det_published)]) == 2
    assert "not a classification one" in capsys.readouterr().err
