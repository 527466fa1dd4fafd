"""A NaN loss stops training with a clear message and keeps the last good checkpoint untouched."""
import json

import torch

from botnet.cli import main
from botnet.engine.checkpoint import read_training_state


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, tiny_train_args, monkeypatch, capsys):
    calls = {"n": 0}
    orig = torch.nn.CrossEntropyLoss.forward

    def nan_at_step_5(self, a, b):
        calls["n"] += 1
        loss = orig(self, a, b)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward", nan_at_step_5)
    run = tmp_path / "run"
    # checkpoint every 2 steps: the good one at step 4 must survive the NaN at step 5
    rc = main(tiny_train_args + ["--batch-size", "32", "--epochs", "1", "--save-every-steps", "2", "--output", str(run)])
    err = capsys.readouterr().err
    assert rc == 3
    assert "loss is nan at step 5" in err and "last.safetensors" in err
    state = read_training_state(run / "last.state.safetensors")
    assert state["step"] == 4
    from botnet.engine.checkpoint import load_weights
    import botnet

    m = botnet.create_model("botnet_mini", num_classes=10, in_chans=1, img_size=28, widths=(4, 8, 8, 16), stem_width=8)
    load_weights(m, run / "last.safetensors")
    assert all(torch.isfinite(p).all() for p in m.state_dict().values())
    assert json.loads((run / "summary.json").read_text())["status"] == "nonfinite_loss"
