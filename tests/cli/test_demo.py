"""botnet demo: its recipe (two BoT blocks at 4x4 tokens), its budget per device, a short run end to end."""
import json

import pytest
import torch

import botnet
from botnet.cli import main
from botnet.data import fashion_mnist as fm
from botnet.engine.config import load_config
from botnet.classification.config import CLASSIFICATION_DEFAULTS

needs_data = pytest.mark.skipif(fm._complete(fm.SYSTEM_DIR) is None,
                                reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


def test_recipe_model_keeps_two_bot_blocks_attending_over_4x4_tokens():
    cfg = load_config("fashion-mnist", [], defaults=CLASSIFICATION_DEFAULTS)
    model = botnet.create_model(cfg["model"]["name"], num_classes=10, in_chans=1, **cfg["model"]["kwargs"])
    seen = []
    for m in model.modules():
        if isinstance(m, botnet.layers.RelPosMHSA):
            m.register_forward_hook(lambda mod, inp, out: seen.append(tuple(inp[0].shape[-2:])))
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert seen == [(4, 4), (4, 4)]


def test_budget_is_555s_on_the_cpu_and_50s_on_a_gpu(monkeypatch, capsys):
    assert main(["demo", "--device", "cpu", "--print-config"]) == 0
    assert "time_budget: 555.0" in capsys.readouterr().out
    import botnet.cli.cmd_demo as demo

    monkeypatch.setattr(demo, "_uses_gpu", lambda args: True)
    assert main(["demo", "--print-config"]) == 0
    assert "time_budget: 50.0" in capsys.readouterr().out
    assert main(["demo", "--print-config", "--time-budget", "7"]) == 0  # an explicit budget wins
    assert "time_budget: 7.0" in capsys.readouterr().out


@needs_data
def test_short_demo_trains_evaluates_draws_and_reports_epochs(tmp_path, capsys):
    run = tmp_path / "demo"
    rc = main(["demo", "--time-budget", "25", "--limit-train", "2048", "--limit-val", "256", "--batch-size", "64",
               "--attention-images", "1", "--no-progress", "--threads", "1", "--output", str(run)])
    assert rc == 0
    out = capsys.readouterr().out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] > 0 and f"after {summary['epochs']:.2f} epochs" in out
    assert summary["demo_wall_seconds"] < 90
    assert 30.0 < summary["final"]["raw"]["top1"] <= 100.0  # ten classes: chance is 10 %
    assert list((run / "attention").glob("*.png")) and (run / "best.safetensors").is_file()
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["amp"] == "none" and cfg["data"]["num_workers"] == 0  # auto, resolved on the CPU
