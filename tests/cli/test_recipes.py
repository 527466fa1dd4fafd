"""Recipes say only what they mean: a run starts from the task's neutral base (each model as
published, no flips), a recipe applies only where it is named, --img-size sizes the images and the
attention tables together, and --print-config says where every value came from."""
import json

import pytest
import torch
import yaml

import botnet
from botnet.classification.config import (CLASSIFICATION_DEFAULTS, attention_grid_warning, model_kwargs_from_cfg,
                                          resolve_classification_config)
from botnet.cli import main
from botnet.engine.config import merge
from helpers import image_folder, run

# Parameter counts at 224 px with 1000 classes (the paper's and torchvision's figures, README table).
STANDARD = {"resnet50": 25_557_032, "botnet50": 20_852_008, "botnet_s1_59": 30_500_696}
FAMILIES = ["resnet50", "resnet101", "botnet50", "botnet152", "botnet_s1_59", "botnet_s1_128", "botnet_mini"]
IMAGENET = {"imagenet-botnet-s1-59-t3": ("botnet_s1_59", 224), "imagenet-botnet-s1-110-t4": ("botnet_s1_110", 224),
            "imagenet-botnet-s1-128-t5": ("botnet_s1_128", 256), "imagenet-botnet-s1-77-t6": ("botnet_s1_77", 320),
            "imagenet-botnet-s1-128-t7": ("botnet_s1_128", 384)}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return image_folder(tmp_path_factory.mktemp("recipes") / "flowers", per_class=1)


def printed(capsys, args):
    """``botnet ARGS --print-config``: (the config as YAML reads it, {key: where it came from})."""
    rc, out, err = run(capsys, [*args, "--print-config"])
    assert rc == 0, err
    sources, stack = {}, []
    for line in out.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        depth = (len(line) - len(line.lstrip())) // 2
        key, _, rest = line.strip().partition(":")
        stack[depth:] = [key]
        if "  # " in rest:
            sources[".".join(stack)] = rest.rsplit("  # ", 1)[1]
    return yaml.safe_load(out), sources, out


def _same_as_published(cfg, arch, size, **regularisers):
    """The run's model has exactly the shapes of ``create_model(arch, img_size=size)``: no option of another
    recipe (only the dropout / stochastic-depth rates a recipe names)."""
    kw = model_kwargs_from_cfg(cfg, 1000, 3)
    assert kw == {"num_classes": 1000, "in_chans": 3, "img_size": size, **regularisers}
    with torch.device("meta"):
        got = {k: v.shape for k, v in botnet.create_model(arch, **kw).state_dict().items()}
        want = {k: v.shape for k, v in botnet.create_model(arch, img_size=size, num_classes=1000).state_dict().items()}
    assert got == want
    return sum(torch.Size(s).numel() for k, s in got.items() if "running" not in k and "num_batches" not in k)


@pytest.mark.parametrize("arch", FAMILIES)
def test_a_folder_run_gets_the_published_model_at_its_size_and_no_demo_keys(arch, folder, capsys):
    cfg, src, out = printed(capsys, ["train", "--dataset", "folder", "--data-dir", folder, "--model", arch,
                                     "--img-size", "224"])
    assert "fashion" not in out and "recipe" not in src.values()
    assert cfg["model"]["kwargs"] == {} and cfg["model"]["img_size"] == cfg["data"]["img_size"] == 224
    assert (src["model.img_size"], src["data.img_size"], src["model.name"]) == ("--img-size", "--img-size", "--model")
    assert cfg["loss"]["label_smoothing"] == 0.0 and cfg["optim"]["name"] == "sgd"
    assert cfg["data"]["hflip"] == 0.0 and cfg["data"]["eval_tta"] == "none"  # no flips the data did not allow
    assert cfg["name"] == f"flowers-{arch}" and src["name"] == "resolved: data and model"
    params = _same_as_published(cfg, arch, 224)
    if arch in STANDARD:
        assert params == STANDARD[arch]


@pytest.mark.parametrize("recipe", sorted(IMAGENET))
def test_the_imagenet_recipes_build_the_papers_models_and_say_which_file_set_what(recipe, folder, capsys):
    arch, size = IMAGENET[recipe]
    cfg, src, out = printed(capsys, ["train", "--config", recipe, "--data-dir", folder])
    assert "fashion" not in out and cfg["name"] == recipe and src["name"] == f"recipe {recipe}"
    assert (cfg["model"]["name"], cfg["model"]["img_size"], cfg["data"]["img_size"]) == (arch, size, size)
    assert src["model.img_size"] == src["data.img_size"] == f"recipe {recipe}"
    assert cfg["data"]["hflip"] == 0.5 and src["data.hflip"] == "recipe imagenet-base"  # ImageNet allows mirrors
    assert cfg["data"]["eval_tta"] == "none" and src["data.eval_tta"] == "base"
    assert src["optim.lr_base_batch"] == "recipe imagenet-base" and src["data.root"] == "--data-dir"
    _same_as_published(cfg, arch, size, drop_rate=cfg["model"]["drop_rate"], drop_path_rate=cfg["model"]["drop_path_rate"])
    cfg, src, _ = printed(capsys, ["train", "--config", recipe, "--img-size", "288"])  # a flag beats the recipe
    assert cfg["model"]["img_size"] == cfg["data"]["img_size"] == 288 and src["model.img_size"] == "--img-size"


def test_plain_train_is_the_neutral_base_and_the_demo_is_the_named_recipe(capsys):
    cfg, src, _ = printed(capsys, ["train"])
    assert (cfg["model"]["name"], cfg["model"]["kwargs"], cfg["data"]["dataset"]) == ("botnet_mini", {}, "fashion-mnist")
    assert cfg["data"]["img_size"] == cfg["model"]["img_size"] == 28  # botnet_mini's own size
    assert src["data.img_size"] == "resolved: botnet_mini's default size" and src["model.img_size"] == "resolved: = data.img_size"
    assert (cfg["data"]["hflip"], cfg["data"]["eval_tta"], cfg["loss"]["label_smoothing"]) == (0.0, "none", 0.0)
    assert cfg["name"] == "fashion-mnist-botnet_mini"
    # the eval crop and resize mode are the model's own, as timm's resolve_data_config takes them
    assert (cfg["data"]["crop_pct"], cfg["data"]["interpolation"]) == (1.0, "bicubic")
    assert src["data.crop_pct"] == src["data.interpolation"] == "resolved: botnet_mini's pretrained_cfg"
    resolved = ("data.img_size", "model.img_size", "name", "data.crop_pct", "data.interpolation")
    assert {v for k, v in src.items() if not k.startswith(resolved)} == {"base"}
    recipe, rsrc, _ = printed(capsys, ["train", "--config", "fashion-mnist"])
    demo, dsrc, _ = printed(capsys, ["demo", "--device", "cpu"])
    # the demo is the recipe, plus its budget and folder (and the flag given here): nothing else differs
    assert demo == merge(recipe, {"train": {"time_budget": 590.0, "device": "cpu"}, "output": {"dir": "runs/demo"}})
    assert dsrc["train.time_budget"] == dsrc["output.dir"] == "botnet demo" and dsrc["train.device"] == "--device"
    assert recipe["model"]["kwargs"] == {"strides": [2, 2, 2, 1]} and rsrc["model.kwargs.strides"] == "recipe fashion-mnist"
    assert (recipe["data"]["hflip"], recipe["data"]["eval_tta"], recipe["name"]) == (0.5, "hflip", "fashion-mnist")


def test_img_size_sizes_the_tables_unless_model_img_size_is_set(capsys):
    cfg, src, _ = printed(capsys, ["train", "--config", "fashion-mnist", "--img-size", "56"])
    assert cfg["model"]["img_size"] == cfg["data"]["img_size"] == 56 and src["model.img_size"] == "--img-size"
    cfg, src, _ = printed(capsys, ["train", "--img-size", "56", "--set", "model.img_size=28"])
    assert (cfg["data"]["img_size"], cfg["model"]["img_size"]) == (56, 28) and src["model.img_size"] == "--set"
    cfg, src, _ = printed(capsys, ["train", "--model", "botnet50", "--set", "data.img_size=96"])
    assert cfg["model"]["img_size"] == 96 and src["model.img_size"] == "resolved: = data.img_size"
    cfg, _, _ = printed(capsys, ["train", "--model", "botnet_s1_77"])
    assert cfg["data"]["img_size"] == cfg["model"]["img_size"] == 320  # T6's own size


def test_print_config_reads_back_as_the_config_with_every_layer_named(capsys, tmp_path):
    own = tmp_path / "mine.yaml"
    own.write_text("base: fashion-mnist\noptim:\n  lr: 0.002\n")  # a user's recipe without a name
    argv = ["train", "--config", str(own), "--lr", "0.01", "--no-plots", "--set", "train.epochs=3", "--set",
            "model.kwargs={heads: 2}", "--set", "data.mean=[0.5]", "--set", "data.std=[0.25]",
            "--data-dir", "my data: é #1", "--set", 'data.auto_augment="rand\\nm9"']  # quoting and a line break survive
    cfg, src, out = printed(capsys, argv)
    assert cfg["name"] == "mine" and src["name"] == "resolved: recipe file mine.yaml"
    assert (src["optim.lr"], src["train.plots"], src["train.epochs"], src["model.kwargs.heads"]) == (
        "--lr", "--no-plots", "--set", "--set")
    assert cfg["model"]["kwargs"] == {"heads": 2} and "model.kwargs.strides" not in src  # replaced, not merged
    assert src["optim.name"] == "recipe fashion-mnist" and src["optim.momentum"] == "base"
    assert (cfg["optim"]["lr"], cfg["train"]["plots"], cfg["data"]["mean"]) == (0.01, False, [0.5])
    from botnet.cli import build_parser
    from botnet.cli.train_args import config_from_args

    args = build_parser().parse_args(argv)
    assert cfg["data"]["root"] == "my data: é #1" and cfg["data"]["auto_augment"] == "rand\nm9"
    assert cfg == json.loads(json.dumps(config_from_args(args)))  # every value, every type, as YAML reads it back
    values = [ln for ln in out.splitlines() if ln.strip() and not ln.startswith("#") and not ln.endswith(":")]
    assert len(values) == len(src) and all("  # " in ln for ln in values)  # one value a line, each with its source


def test_detection_keeps_its_own_schema(capsys):
    from botnet.detection.config import DETECTION_DEFAULTS

    cfg, src, _ = printed(capsys, ["detect", "train"])
    assert cfg == json.loads(json.dumps(DETECTION_DEFAULTS)) and set(src.values()) == {"base"}
    assert "eval_tta" not in cfg["data"] and "label_smoothing" not in cfg["train"] and cfg["name"] == "detect"
    assert "loss" not in cfg  # classification's section


def _cfg(**model_data):
    cfg = merge(CLASSIFICATION_DEFAULTS, model_data)
    resolve_classification_config(cfg)
    return cfg


def test_one_warning_when_the_attention_has_no_positions_to_encode():
    # botnet50 reduces 32x (stem 4, then 2, 2, 2); c5's first block attends at the c4 size, the others at c5's
    assert attention_grid_warning(_cfg(model={"name": "botnet50"}, data={"img_size": 64})) is None  # 4x4, 2x2, 2x2
    w = attention_grid_warning(_cfg(model={"name": "botnet50"}, data={"img_size": 32}))  # 2x2, 1x1, 1x1
    assert w.startswith("botnet50: at 32 px 2 of 3 BoT blocks attend over 1x1 tokens") and "--img-size" in w
    # the run: the demo's strides on botnet50, tables at 28 px (1x1 tokens in c5), 64 px images
    w = attention_grid_warning(_cfg(model={"name": "botnet50", "img_size": 28, "kwargs": {"strides": [2, 2, 2, 1]}},
                                    data={"img_size": 64}))
    assert "built for 1x1 tokens (model.img_size 28)" in w and "3 of 3" in w
    # tables for 224 px (c4 14x14, c5 7x7): 896 px is 4x (56x56), 1024 px 4.6x (64x64)
    assert attention_grid_warning(_cfg(model={"name": "botnet50", "img_size": 224}, data={"img_size": 896})) is None
    w = attention_grid_warning(_cfg(model={"name": "botnet50", "img_size": 224}, data={"img_size": 224,
                                                                                       "eval_img_size": 1024}))
    assert "at 1024 px the position tables built for 14x14 tokens (model.img_size 224) are resized to 64x64 (4.6x)" in w
    assert attention_grid_warning(_cfg(model={"name": "resnet50"}, data={"img_size": 16})) is None  # no attention
    assert attention_grid_warning(_cfg(model={"name": "botnet_mini"}, data={})) is None  # 28 px: 7x7 tokens


@pytest.mark.parametrize("size,warned", [(4, True), (28, False)])
def test_a_run_says_so_in_one_line_at_start(size, warned, folder, tmp_path, capsys):
    rc, out, err = run(capsys, ["train", "--dataset", "folder", "--data-dir", folder, "--img-size", size,
                                "--set", "model.kwargs={widths: [4, 8, 8, 16], stem_width: 8}", "--batch-size", "2",
                                "--max-steps", "1", "--no-progress", "--no-plots", "--eval-every", "0", "--threads",
                                "1", "--output", tmp_path / "run"])
    assert rc == 0, err
    lines = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    # botnet_mini reduces 4x (strides 1, 2, 2, 1): 4 px leaves its two BoT blocks 1x1 tokens
    assert lines == (["warning: botnet_mini: at 4 px 2 of 2 BoT blocks attend over 1x1 tokens, fewer than 2x2. "
                      "To fix: raise --img-size or lower model.kwargs.strides"] if warned else [])
