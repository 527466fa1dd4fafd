"""The command line holds to the declared config: every declared flag is in --help with the key it sets,
every declared range and choice is enforced (exit 2, one line naming the key or flag), and a run saved
while label smoothing, mixup and cutmix sat in ``train`` resumes with them."""
import json

import pytest
import yaml

from botnet.classification.config import CLASSIFICATION_SCHEMA
from botnet.detection.config import DETECTION_SCHEMA
from helpers import assert_one_line_error, image_folder, rewrite_safetensors, run

TASKS = {"classification": (["train"], CLASSIFICATION_SCHEMA), "detection": (["detect", "train"], DETECTION_SCHEMA)}


def _outside(f):
    """Values just outside what ``f`` declares: past each end of its range, not one of its choices."""
    if f.choices is not None:
        return ["nosuch"]
    if f.kind is bool:
        return ["maybe"]
    step = 1 if f.kind is int else 0.001
    values = []
    if f.low is not None:
        values.append(f.low if f.low_open else f.low - step)
    if f.high is not None:
        values.append(f.high if f.high_open else f.high + step)
    return values


def _cases(task):
    return [pytest.param(task, key, v, id=f"{task}:{key}={v}") for key, f in TASKS[task][1].fields()
            for v in _outside(f)]


def _flags(task):
    return [pytest.param(task, key, f, id=f"{task}:{f.flag}") for key, f in TASKS[task][1].fields() if f.flag]


@pytest.mark.parametrize("task, key, field", _flags("classification") + _flags("detection"))
def test_every_declared_flag_is_in_help_with_its_keys(task, key, field, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # one line per option
    rc, out, _ = run(capsys, [*TASKS[task][0], "--help"])
    assert rc == 0
    entries, text = {}, []  # each option with its help (argparse may start the help on the next line)
    for ln in out.splitlines():
        if ln.startswith("  -"):
            text = entries.setdefault(ln.split()[0].rstrip(","), [])
        elif not ln.startswith("  "):  # a group's title, a blank line
            text = []
        text.append(ln.strip())
    assert field.flag in entries, f"{field.flag} is not in the help"
    entry = " ".join(entries[field.flag])
    assert entry.endswith(f"[{', '.join((key, *field.also_sets))}]"), entry
    assert field.help in entry
    if field.kind is bool:
        assert entry.startswith(f"{field.flag}, --no-{field.flag[2:]} "), entry


# Every flag of the training commands and the key it sets (the command line users know)
ENGINE_FLAGS = {
    "--epochs": "train.epochs", "--batch-size": "data.batch_size", "--accum-steps": "train.accum_steps",
    "--lr": "optim.lr", "--opt": "optim.name", "--weight-decay": "optim.weight_decay", "--sched": "sched.name",
    "--warmup-epochs": "sched.warmup_epochs", "--amp": "train.amp", "--ema-decay": "train.ema_decay",
    "--grad-clip": "train.grad_clip", "--num-workers": "data.num_workers", "--seed": "train.seed",
    "--device": "train.device", "--threads": "train.threads", "--time-budget": "train.time_budget",
    "--max-steps": "train.max_steps", "--eval-every": "train.eval_every",
    "--save-every-steps": "train.save_every_steps",
    "--output": "output.dir", "--ema": "train.ema", "--channels-last": "train.channels_last",
    "--compile": "train.compile", "--sync-bn": "train.sync_bn", "--freeze-bn": "train.freeze_bn",
    "--deterministic": "train.deterministic", "--progress": "train.progress", "--plots": "train.plots",
}
CLASSIFICATION_FLAGS = {
    "--dataset": "data.dataset", "--data-dir": "data.root", "--model": "model.name", "--img-size": "data.img_size",
    "--label-smoothing": "loss.label_smoothing", "--mixup": "loss.mixup", "--cutmix": "loss.cutmix",
    "--auto-augment": "data.auto_augment", "--drop-rate": "model.drop_rate", "--drop-path-rate": "model.drop_path_rate",
    "--limit-train": "data.limit_train", "--limit-val": "data.limit_val", "--skip-bad": "data.skip_bad",
    "--download": "data.download",
}


def test_the_flags_are_the_ones_users_know():
    assert {f.flag: k for k, f in CLASSIFICATION_SCHEMA.fields() if f.flag} == {**ENGINE_FLAGS, **CLASSIFICATION_FLAGS}
    assert {f.flag: k for k, f in DETECTION_SCHEMA.fields() if f.flag} == {
        **ENGINE_FLAGS, "--dataset": "data.dataset", "--data-dir": "data.root", "--backbone": "model.backbone"}
    assert CLASSIFICATION_SCHEMA.field("data.img_size").also_sets == ("model.img_size",)


@pytest.mark.parametrize("task, key, value", _cases("classification") + _cases("detection"))
def test_every_declared_range_is_enforced(task, key, value, tmp_path, capsys):
    cmd, _ = TASKS[task]
    out = tmp_path / "run"
    # short and local, were the value taken: a few steps, the data under tmp_path
    safe = ["--max-steps", "1", "--no-progress", "--threads", "1"]
    safe += ["--limit-train", "8", "--limit-val", "8"] if task == "classification" else ["--data-dir", tmp_path / "m"]
    rc, _, err = run(capsys, [*cmd, *safe, "--output", out, "--set", f"{key}={json.dumps(value)}"])
    assert_one_line_error(rc, err, key)
    assert not out.exists()


@pytest.mark.parametrize("task, key, field", [p for p in _flags("classification") + _flags("detection")
                                               if p.values[2].kind in (int, float)])
def test_every_flag_refuses_values_outside_its_range(task, key, field, tmp_path, capsys):
    for value in _outside(field):
        rc, _, err = run(capsys, [*TASKS[task][0], field.flag, str(value), "--output", tmp_path / "run"])
        assert_one_line_error(rc, err, field.flag)


# ----------------------------------------------------------------------------- saved configs, old layout
def _old_layout(cfg: dict) -> dict:
    """``cfg`` as botnet wrote it while label smoothing, mixup and cutmix sat in ``train``."""
    cfg = dict(cfg, train=dict(cfg["train"], **cfg["loss"]))
    del cfg["loss"]
    return cfg


def test_a_run_saved_in_the_old_layout_resumes_with_its_values(tmp_path, capsys):
    folder = image_folder(tmp_path / "flowers", per_class=4)
    r = tmp_path / "run"
    args = ["train", "--dataset", "folder", "--data-dir", folder, "--img-size", "16", "--batch-size", "4",
            "--epochs", "2", "--set", "model.kwargs={widths: [4, 8, 8, 16], stem_width: 8}", "--no-progress",
            "--no-plots", "--eval-every", "0", "--threads", "1", "--output", r]
    rc, _, err = run(capsys, [*args, "--max-steps", "1", "--label-smoothing", "0.2", "--mixup", "0.4"])
    assert rc == 0, err
    # the run folder as an older botnet left it: config.json and the checkpoint's config in the old layout
    saved = json.loads((r / "config.json").read_text())
    assert saved["loss"] == {"label_smoothing": 0.2, "mixup": 0.4, "cutmix": 0.0}
    (r / "config.json").write_text(json.dumps(_old_layout(saved)))

    def old_meta(md):
        md["config"] = json.dumps(_old_layout(json.loads(md["config"])))

    rewrite_safetensors(r / "last.safetensors", meta=old_meta)
    rc, out, err = run(capsys, ["train", "--resume", r, "--print-config"])
    assert rc == 0, err
    shown = yaml.safe_load(out)
    assert shown["loss"] == {"label_smoothing": 0.2, "mixup": 0.4, "cutmix": 0.0}
    assert "label_smoothing" not in shown["train"] and f"label_smoothing: 0.2  # --resume {r}" in out
    rc, out, err = run(capsys, ["train", "--resume", r, "--set", "train.max_steps=null"])  # on to the end
    assert rc == 0 and "done (completed): 4 steps" in out, err
    resumed = json.loads((r / "config.json").read_text())
    assert resumed["loss"] == {"label_smoothing": 0.2, "mixup": 0.4, "cutmix": 0.0}
    assert "mixup" not in resumed["train"] and resumed["train"]["epochs"] == 2


def test_a_recipe_and_set_in_the_old_layout_still_read(tmp_path, capsys):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("base: fashion-mnist\ntrain:\n  cutmix: 1.0\n  epochs: 3\n")
    rc, out, err = run(capsys, ["train", "--config", recipe, "--set", "train.mixup=0.3", "--print-config"])
    assert rc == 0, err
    cfg = yaml.safe_load(out)
    assert cfg["loss"] == {"label_smoothing": 0.1, "mixup": 0.3, "cutmix": 1.0} and cfg["train"]["epochs"] == 3
    assert "loss.cutmix" not in out and "  cutmix: 1.0  # recipe mine" in out and "  mixup: 0.3  # --set" in out
