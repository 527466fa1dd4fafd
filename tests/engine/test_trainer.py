"""The engine trains any Task: a toy regression task needs only its own pieces; threads are restored."""
import json

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from botnet.data.builder import ResumableSampler
from botnet.engine import StepOutput, Task, TaskSetup, Trainer
from botnet.engine.config import ENGINE_DEFAULTS, merge
from botnet.engine.optim import param_groups


class Regression(Task):
    """y = x @ w + noise, fitted by a linear layer: the smallest task there is."""

    name = "regression"
    key_metric = "neg_mse"

    def setup(self, cfg, dist):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(256, 8, generator=g)
        y = x @ torch.randn(8, 1, generator=g) + 0.01 * torch.randn(256, 1, generator=g)
        ds = TensorDataset(x, y)
        sampler = ResumableSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=0, drop_last=True)
        loader = DataLoader(ds, batch_size=cfg["data"]["batch_size"], sampler=sampler, drop_last=True)
        return TaskSetup(model=nn.Linear(8, 1), arch="linear", model_kwargs={}, train_loader=loader, num_val=256,
                         state={"x": x, "y": y})

    def train_step(self, model, batch, device, setup):
        x, y = batch
        return StepOutput({"loss": nn.functional.mse_loss(model(x), y)}, batch_size=len(x))

    def evaluate(self, model, setup, cfg, dist, desc="eval"):
        with torch.no_grad():
            mse = nn.functional.mse_loss(model(setup.state["x"]), setup.state["y"]).item()
        return {"neg_mse": -mse, "mse": mse}


def _cfg(tmp_path, **train):
    return merge(ENGINE_DEFAULTS, {"output": {"dir": str(tmp_path / "run")}, "data": {"batch_size": 32},
                                   "optim": {"name": "sgd", "lr": 0.1, "weight_decay": 0.0},
                                   "train": {"epochs": 5, "progress": False, "plots": False, "threads": 1,
                                             **train}})


def test_a_new_task_needs_only_its_own_pieces(tmp_path):
    summary = Trainer(Regression(), _cfg(tmp_path, epochs=20)).run()
    run = tmp_path / "run"
    assert summary["status"] == "completed" and summary["steps"] == 160
    assert summary["final"]["raw"]["mse"] < 0.01  # it learned the linear map
    vals = [r["mse"] for r in map(json.loads, open(run / "metrics.jsonl")) if r["phase"] == "val"]
    assert vals[-1] < vals[0] / 10
    for f in ("config.json", "summary.json", "last.safetensors", "last.state.safetensors", "best.safetensors"):
        assert (run / f).is_file(), f
    assert json.loads((run / "summary.json").read_text())["best"]["metric"] == "neg_mse"


def test_training_restores_the_thread_count(tmp_path):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        Trainer(Regression(), _cfg(tmp_path, epochs=1, threads=1)).run()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_one_weight_decay_policy():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)
            self.table = nn.Parameter(torch.zeros(5, 4))

        def no_weight_decay(self):
            return {"table"}

    wrapper = nn.Sequential(Net())  # declared names are found at any depth (a backbone inside a detector)
    decay, no_decay = param_groups(wrapper, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 3, 3, 3])]
    names = {id(p): n for n, p in wrapper.named_parameters()}
    assert sorted(names[id(p)] for p in no_decay["params"]) == ["0.bn.bias", "0.bn.weight", "0.conv.bias", "0.table"]
