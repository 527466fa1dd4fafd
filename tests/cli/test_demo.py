"""botnet demo: its recipe (two BoT blocks at 4x4 tokens) and its budget per device (a short demo run end to
end is in test_classification_cli.py)."""
import torch

import botnet
from botnet.cli import main
from botnet.engine.config import load_config
from botnet.classification.config import CLASSIFICATION_DEFAULTS


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


def test_budget_is_590s_on_the_cpu_and_50s_on_a_gpu(monkeypatch, capsys):
    assert main(["demo", "--device", "cpu", "--print-config"]) == 0
    assert "time_budget: 590.0" in capsys.readouterr().out
    import botnet.cli.cmd_demo as demo

    monkeypatch.setattr(demo, "_uses_gpu", lambda args: True)
    assert main(["demo", "--print-config"]) == 0
    assert "time_budget: 50.0" in capsys.readouterr().out
    assert main(["demo", "--print-config", "--time-budget", "7"]) == 0  # an explicit budget wins
    assert "time_budget: 7.0" in capsys.readouterr().out
