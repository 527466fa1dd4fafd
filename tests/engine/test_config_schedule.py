"""Recipes load with overrides; the ImageNet recipes carry the paper's T3-T7 settings; schedules fit budgets."""
import pytest
import torch

from botnet.errors import ConfigError
from botnet.classification import CLASSIFICATION_DEFAULTS
from botnet.engine.config import list_recipes, load_config
from botnet.engine.schedule import build_scheduler

T = {"t3": ("botnet_s1_59", 224), "t4": ("botnet_s1_110", 224), "t5": ("botnet_s1_128", 256),
     "t6": ("botnet_s1_77", 320), "t7": ("botnet_s1_128", 384)}


@pytest.mark.parametrize("t", sorted(T))
def test_imagenet_recipes(t):
    name = [r for r in list_recipes() if r.startswith("imagenet-") and r.endswith(t)]
    assert len(name) == 1, list_recipes()
    cfg = load_config(name[0], defaults=CLASSIFICATION_DEFAULTS)
    assert (cfg["model"]["name"], cfg["data"]["img_size"]) == T[t]
    assert cfg["train"]["epochs"] == 350 and cfg["optim"]["name"] == "sgd" and cfg["optim"]["momentum"] == 0.9
    assert cfg["sched"]["name"] == "cosine" and cfg["sched"]["warmup_epochs"] > 0
    assert cfg["loss"]["label_smoothing"] == 0.1 and cfg["train"]["ema"] and cfg["train"]["ema_decay"] == 0.9999
    assert cfg["optim"]["weight_decay"] == 4e-5 and cfg["data"]["auto_augment"].startswith("rand-")
    assert cfg["model"]["drop_rate"] > 0 and 0 < cfg["model"]["drop_path_rate"] <= 0.1
    assert cfg["data"]["dataset"] == "folder"


def test_overrides_and_unknown_keys():
    cfg = load_config("fashion-mnist", ["optim.lr=0.05", "train.amp=bf16", "model.kwargs.heads=2"],
                      defaults=CLASSIFICATION_DEFAULTS)
    assert cfg["optim"]["lr"] == 0.05 and cfg["train"]["amp"] == "bf16" and cfg["model"]["kwargs"]["heads"] == 2
    with pytest.raises(ConfigError, match="optim.lrr"):
        load_config("fashion-mnist", ["optim.lrr=1"], defaults=CLASSIFICATION_DEFAULTS)


def test_exponent_floats_are_numbers_in_overrides_and_recipes(tmp_path):
    # PyYAML alone reads 5e-4 as a string (YAML 1.1), which the schema would then refuse
    recipe = tmp_path / "r.yaml"
    recipe.write_text("base: fashion-mnist\noptim:\n  lr: 2e-3\n")
    cfg = load_config(str(recipe), ["optim.weight_decay=5e-4", "optim.lr_base_batch=2.56E+2", "name=1e-x"],
                      defaults=CLASSIFICATION_DEFAULTS)
    assert cfg["optim"]["lr"] == 2e-3 and cfg["optim"]["weight_decay"] == 5e-4 and cfg["optim"]["lr_base_batch"] == 256.0
    assert cfg["name"] == "1e-x"


def test_cosine_can_be_fitted_to_fewer_steps():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    s = build_scheduler(opt, {"name": "cosine", "warmup_epochs": 0, "min_lr": 0.0}, steps_per_epoch=10, epochs=10)
    for t in range(1, 21):
        s.step_update(t)
    assert opt.param_groups[0]["lr"] > 0.09
    assert s.fit_total_steps(40)
    s.step_update(40)
    assert opt.param_groups[0]["lr"] < 1e-6  # the decay now ends at step 40 instead of 100
