"""The declared config (botnet.engine.schema_decl): defaults, checks, saved configs of older runs and the
docs' tables all come from one declaration, and cannot drift from it."""
import argparse
import importlib.util
from pathlib import Path

import pytest

from botnet.classification.config import (CLASSIFICATION_DEFAULTS, CLASSIFICATION_SCHEMA,
                                          validate_classification_config)
from botnet.detection.config import DETECTION_SCHEMA, validate_detection_config
from botnet.engine.config import ENGINE_SCHEMA, Field, Schema, Section, merge
from botnet.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
# A config saved before label smoothing, mixup and cutmix moved from train to loss
OLD_TRAIN = {"epochs": 3, "label_smoothing": 0.2, "mixup": 0.4, "cutmix": 1.0, "ema": True}


def _tables():
    spec = importlib.util.spec_from_file_location("config_tables", ROOT / "scripts" / "config_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["engine", "classification", "detection"])
def test_the_docs_tables_are_the_declaration(name):
    tables = _tables()
    page, table = tables.tables()[name]
    found = tables.in_page((ROOT / page).read_text())
    assert name in found, f"{page} lost its <!-- config-table: {name} --> marker"
    assert found[name] == table, f"{page} is out of date: run python scripts/config_tables.py"


def test_a_tasks_table_holds_its_own_keys_and_the_defaults_it_changes():
    table = DETECTION_SCHEMA.markdown_table(exclude=ENGINE_SCHEMA)
    rows = [r.split(" | ")[0].strip("| `") for r in table.splitlines()[2:]]
    assert "optim.lr" in rows and "train.epochs" in rows and "eval.draw_scale" in rows  # changed, own
    assert "optim.momentum" not in rows and "train.seed" not in rows  # the engine's, unchanged
    full = ENGINE_SCHEMA.markdown_table()
    assert "| `train.threads` | `auto` | an integer >= 1, or auto | `--threads` |" in full
    assert "| `train.ema` | `false` | true or false | `--ema` / `--no-ema` |" in full


def test_defaults_keep_the_declared_order_and_a_tasks_changes():
    det = DETECTION_SCHEMA.defaults()
    assert list(det) == ["name", "model", "data", "optim", "sched", "train", "output", "eval"]
    assert list(det["data"])[:3] == ["batch_size", "num_workers", "dataset"] and det["data"]["batch_size"] == 2
    assert det["data"]["mosaic"]["canvas"] == 160 and det["optim"]["lr"] == 0.02
    assert ENGINE_SCHEMA.defaults()["optim"]["lr"] == 0.1  # the shared declaration is left as it was
    assert list(CLASSIFICATION_DEFAULTS)[-1] == "loss" and "label_smoothing" not in CLASSIFICATION_DEFAULTS["train"]
    a, b = CLASSIFICATION_SCHEMA.defaults(), CLASSIFICATION_SCHEMA.defaults()
    a["data"]["scale"].append(3)
    assert b["data"]["scale"] == [0.08, 1.0]  # each call a fresh copy


def test_a_key_is_declared_once():
    with pytest.raises(ValueError, match="optim.lr is declared twice"):
        ENGINE_SCHEMA.extend(Section("optim", (Field("lr", 1.0, float),)))
    with pytest.raises(ValueError, match="optim.nope"):
        ENGINE_SCHEMA.extend(defaults={"optim.nope": 1})


@pytest.mark.parametrize("key, value, message", [
    ("train.epochs", 0, "train.epochs = 0 is invalid: it must be a number > 0"),
    ("train.max_steps", 1.5, "train.max_steps = 1.5 is invalid: it must be an integer >= 1 (or null)"),
    ("train.ema_decay", True, "train.ema_decay = True is invalid: it must be a number >= 0 and <= 1"),
    ("train.amp", "fp8", "train.amp = 'fp8' is invalid: use one of auto, none, bf16, fp16 (or null)"),
    ("train.ema", "maybe", "train.ema = 'maybe' is invalid: expected true or false"),
    ("train.channels_last", "yes", "train.channels_last = 'yes' is invalid: expected true or false (or auto)"),
    ("data.num_workers", -1, "data.num_workers = -1 is invalid: it must be an integer >= 0 (or auto)"),
    ("train.threads", 0, "train.threads = 0 is invalid: use auto or a positive number of threads"),
    ("optim.name", "", "optim.name = '' is invalid: expected a non-empty string"),
    ("model.kwargs", 5, "model.kwargs = 5 is invalid: expected a mapping of create_model options"),
    ("sched.milestones", [0.5, 2],
     "sched.milestones = [0.5, 2] is invalid: sched.milestones[1] is 2; expected a finite number >= 0 and <= 1"),
    ("loss.label_smoothing", 1.0, "loss.label_smoothing = 1.0 is invalid: it must be a number >= 0 and < 1"),
    ("data.mosaic.canvas", 16, "data.mosaic.canvas = 16 is invalid: it must be an integer >= 32"),
])
def test_a_bad_value_is_one_line_naming_the_key_and_what_it_must_be(key, value, message):
    detection = key.startswith("data.mosaic")
    cfg = (DETECTION_SCHEMA if detection else CLASSIFICATION_SCHEMA).defaults()
    node = cfg
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    with pytest.raises(ConfigError) as e:
        (validate_detection_config if detection else validate_classification_config)(cfg)
    assert str(e.value) == message


def test_valid_values_pass_and_a_section_given_whole_is_named():
    cfg = merge(DETECTION_SCHEMA.defaults(), {"train": {"threads": "4", "channels_last": "auto", "amp": None},
                                              "data": {"num_workers": 3}})
    assert DETECTION_SCHEMA.validate(cfg) is cfg  # "4": the threads flag of older runs saved text
    cfg["data"]["mosaic"] = {"num_train": 8}  # --set data.mosaic={...}: the rest keep their own defaults
    DETECTION_SCHEMA.validate(cfg)
    cfg["train"] = {"epochs": 1}  # --set train={epochs: 1}
    with pytest.raises(ConfigError, match="train.max_steps is missing: a whole train section was given"):
        DETECTION_SCHEMA.validate(cfg)


def test_flags_parse_their_declared_kind_and_range():
    schema = Schema([Section("s", (Field("n", 1, int, low=1, flag="--n"), Field("p", 0.5, float, low=0, high=1,
                                                                                flag="--p"),
                                   Field("w", "auto", int, low=0, auto=True, flag="--w"),
                                   Field("on", False, bool, flag="--on", also_sets=("s.n",))))])
    parser = argparse.ArgumentParser()
    schema.add_arguments(parser)
    args = parser.parse_args(["--n", "3", "--p", "1", "--w", "auto", "--no-on"])
    assert schema.flag_values(args) == [("s.n", 3, "--n"), ("s.p", 1.0, "--p"), ("s.w", "auto", "--w"),
                                        ("s.on", False, "--no-on"), ("s.n", False, "--no-on")]
    assert schema.flag_values(parser.parse_args([])) == []  # an absent flag leaves the config alone
    types = {a.dest: a.type for a in parser._actions}
    for dest, text, words in (("n", "0", "0 is not allowed: give an integer >= 1"), ("n", "x", "'x' is not an integer"),
                              ("p", "1.5", "1.5 is not allowed: give a number between 0 and 1"),
                              ("p", "nan", "'nan' is not a finite number"), ("w", "-1", "give an integer >= 0")):
        with pytest.raises(argparse.ArgumentTypeError, match=words):
            types[dest](text)


def test_a_saved_config_of_the_old_layout_reads_with_its_keys_moved():
    old = {"name": "x", "train": dict(OLD_TRAIN), "optim": {"lr": 0.01}}
    cfg = CLASSIFICATION_SCHEMA.from_saved(old)
    assert cfg["loss"] == {"label_smoothing": 0.2, "mixup": 0.4, "cutmix": 1.0}
    assert cfg["train"]["epochs"] == 3 and cfg["train"]["ema"] and "mixup" not in cfg["train"]
    assert cfg["optim"]["lr"] == 0.01 and cfg["optim"]["momentum"] == 0.9  # the rest as saved, over the defaults
    assert old["train"] == OLD_TRAIN  # the saved config itself is left as it was
    # a value already at the new place wins; a config without the old keys is unchanged
    both = CLASSIFICATION_SCHEMA.migrate({"train": {"mixup": 0.4}, "loss": {"mixup": 0.8}})
    assert both == {"train": {}, "loss": {"mixup": 0.8}}
    assert CLASSIFICATION_SCHEMA.migrate({"train": {"epochs": 1}}) == {"train": {"epochs": 1}}
    assert CLASSIFICATION_SCHEMA.current_key("train.mixup") == "loss.mixup"
    assert DETECTION_SCHEMA.renamed == {}  # detection never had these keys


def test_a_task_reads_its_saved_configs_through_its_declaration():
    """``Task.saved_config`` (resume, botnet eval, a task's generated eval) migrates what the task's schema renamed."""
    from botnet.tasks import config_schema, load_task

    assert config_schema("classification") is CLASSIFICATION_SCHEMA and config_schema("detection") is DETECTION_SCHEMA
    cfg = load_task("classification").saved_config({"train": dict(OLD_TRAIN)})
    assert cfg["loss"] == {"label_smoothing": 0.2, "mixup": 0.4, "cutmix": 1.0} and "mixup" not in cfg["train"]
    assert load_task("detection").saved_config(None) == DETECTION_SCHEMA.defaults()
