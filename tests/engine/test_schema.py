"""The validation layer for structured files (botnet.validation) and where it is applied: checkpoint
metadata, training state, a published folder's config.json. Each damaged file is one error naming
the file and the field, never a RecursionError, TypeError or a silently wrong resume."""
import json
import math
import shutil

import pytest
import torch

import botnet
from botnet.engine import checkpoint as ckpt
from botnet.errors import CheckpointError, UserInputError
from botnet.hub import PublishedModelError, read_config
from botnet.io.weights import CheckpointMismatchError, state_path_for
from botnet.validation import (MAX_JSON_DEPTH, AnyOf, Dict, Int, List, Num, Str, json_depth, loads_json, problem,
                               validate)
from helpers import rewrite_safetensors, set_extra

MINI_KW = {"widths": [4, 8, 8, 16], "stem_width": 8, "strides": [2, 2, 1, 1], "img_size": 28, "num_classes": 10,
           "in_chans": 1}
DEEP = "[" * 5000 + "]" * 5000


class FileError(UserInputError):
    pass


# ----------------------------------------------------------------------------- the layer itself
SPEC = Dict({"name": Str(min_len=1, required=True), "n": Int(low=0), "lr": Num(low=0, low_open=True),
             "tags": List(Str()), "best": Dict({"value": Num(finite=False)}, nullable=True),
             "boxes": List(List(Num(), min_len=4, max_len=4)), "mode": Str(("a", "b")),
             "either": AnyOf(Int(), Str())}, extra=False)


@pytest.mark.parametrize("value, needle", [
    ({}, "name is missing; expected a non-empty string"),
    ({"name": ""}, "name is ''; expected a non-empty string"),
    ({"name": "x", "n": -1}, "n is -1; expected an integer >= 0"),
    ({"name": "x", "n": 1.5}, "n is 1.5; expected an integer"),
    ({"name": "x", "n": True}, "n is True; expected an integer"),
    ({"name": "x", "lr": 0}, "lr is 0; expected a finite number > 0"),
    ({"name": "x", "lr": float("nan")}, "lr is nan"),
    ({"name": "x", "tags": ["a", 7]}, "tags[1] is 7; expected a string"),
    ({"name": "x", "best": "x"}, "best is 'x'; expected a mapping"),
    ({"name": "x", "boxes": [[1, 2, 3, 4], [1, 2, "3", 4]]}, "boxes[1][2] is '3'"),
    ({"name": "x", "boxes": [[1, 2, 3]]}, "boxes[0] is [1, 2, 3]; expected a list of 4"),
    ({"name": "x", "mode": "c"}, "mode is 'c'; expected one of 'a', 'b'"),
    ({"name": "x", "either": [1]}, "either is [1]; expected an integer or a string"),
    ({"name": "x", "other": 1}, "other is not a known field"),
    (5, "the top level is 5; expected a mapping"),
])
def test_a_failed_check_names_the_file_the_field_and_what_is_expected(value, needle):
    with pytest.raises(FileError) as e:
        validate(value, SPEC, source="f.json", error=FileError)
    msg = str(e.value)
    assert msg.startswith("f.json: ") and needle in msg and "\n" not in msg, msg


def test_valid_values_pass_unchanged():
    v = {"name": "x", "n": 3, "lr": 0.1, "tags": [], "best": None, "boxes": [[1, 2, 3.5, 4]], "mode": "a",
         "either": "s"}
    assert validate(v, SPEC, source="f", error=FileError) is v
    assert problem({"name": "x", "best": {"value": -math.inf}}, SPEC) is None  # finite=False takes -inf


def test_json_depth_is_measured_on_the_text_before_parsing():
    assert json_depth('{"a": [1, {"b": []}]}') == 4
    assert json_depth('{"s": "[[[[{{{{ \\" ]]]"}') == 1  # brackets inside strings (and escaped quotes) do not count
    assert json_depth(DEEP) == 5000
    assert loads_json('{"a": [1]}', source="f") == {"a": [1]}
    with pytest.raises(FileError, match=rf"f.json is nested 5000 levels deep \(the limit is {MAX_JSON_DEPTH}\)"):
        loads_json(DEEP, source="f.json", error=FileError)
    with pytest.raises(FileError, match="f.json is not valid JSON: line 1 column 2"):
        loads_json("{x", source="f.json", error=FileError)
    # depth 200 is below Python's recursion limit, so json.loads alone would take it: the cap is ours
    with pytest.raises(FileError, match="nested 200 levels"):
        loads_json("[" * 200 + "]" * 200, source="f", error=FileError)


# ----------------------------------------------------------------------------- checkpoints
def _set_meta(key, raw):
    return lambda md: {**md, key: raw}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny checkpoint pair after one AdamW step, as the trainer saves it."""
    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    model = botnet.create_model("botnet_mini", **MINI_KW)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 1, 28, 28)).sum().backward()
    opt.step()
    extra = {"epoch": 0, "batch_in_epoch": 1, "best": {"value": -math.inf, "which": None, "step": 0, "metric": "top1"},
             "train_seconds": 0.5}
    w = ckpt.save_checkpoint(d / "last.safetensors", model, optimizer=opt, epoch=0, step=1, arch="botnet_mini",
                             model_kwargs=MINI_KW, class_names=[str(i) for i in range(10)], extra=extra,
                             config={"optim": {"name": "adamw"}})
    return w


@pytest.fixture
def pair(saved, tmp_path):
    for p in (saved, state_path_for(saved)):
        shutil.copy(p, tmp_path / p.name)
    w = tmp_path / saved.name
    return w, state_path_for(w)


def _model_and_opt(kind=torch.optim.AdamW, **kw):
    model = botnet.create_model("botnet_mini", **MINI_KW)
    return model, kind(model.parameters(), lr=1e-3, **kw)


def test_good_checkpoint_reads_and_resumes(pair):
    w, s = pair
    meta = ckpt.read_metadata(w)
    assert meta["step"] == 1 and meta["extra"]["best"]["value"] == -math.inf and len(meta["class_names"]) == 10
    model, opt = _model_and_opt()
    info = ckpt.load_checkpoint(w, model, optimizer=opt)
    assert info["step"] == 1 and len(opt.state) > 0


@pytest.mark.parametrize("key, raw, field", [
    ("class_names", DEEP, "nested 5000 levels deep"),
    ("model_kwargs", '{"a": ' + DEEP + "}", "(metadata field model_kwargs) is nested 5001 levels"),
    ("class_names", "7", "class_names is 7; expected a list"),
    ("class_names", '["a", 3]', "class_names[1] is 3"),
    ("model_kwargs", json.dumps({**MINI_KW, "num_classes": "abc"}), "model_kwargs.num_classes is 'abc'; expected an "
                                                                     "integer >= 1"),
    ("model_kwargs", "[1, 2]", "model_kwargs is [1, 2]; expected a mapping"),
    ("config", '{"data": 5}', "config.data is 5; expected a mapping"),
    ("step", "-5", "step is -5; expected an integer >= 0"),
    ("extra", "{", "(metadata field extra) is not valid JSON"),
])
def test_damaged_metadata_is_one_error_naming_file_and_field(pair, key, raw, field):
    w, _ = pair
    rewrite_safetensors(w, meta=_set_meta(key, raw))
    with pytest.raises(CheckpointError) as e:
        ckpt.read_metadata(w)
    assert str(w) in str(e.value) and field in str(e.value) and "\n" not in str(e.value), str(e.value)


@pytest.mark.parametrize("key, value, field", [
    ("best", "x", "extra.best is 'x'; expected a mapping"),
    ("best", {"value": "high"}, "extra.best.value is 'high'"),
    ("train_seconds", "abc", "extra.train_seconds is 'abc'; expected a finite number >= 0"),
    ("batch_in_epoch", -1, "extra.batch_in_epoch is -1"),
])
def test_wrong_types_in_extra_are_named(pair, key, value, field):
    w, _ = pair
    rewrite_safetensors(w, meta=set_extra(key, value))
    with pytest.raises(CheckpointError, match="extra") as e:
        ckpt.read_metadata(w)
    assert field in str(e.value), str(e.value)


def _state_case(name):
    """A change to the training state's skeleton, and the words the error must hold."""
    def rng(sk):
        sk["rng"] = {"python": 5, "numpy": "x", "torch": [1]}

    def no_groups(sk):
        sk["optimizer"]["param_groups"] = []

    cases = {
        "deep": (lambda sk: sk["extra"].update(x=json.loads("[" * 300 + "]" * 300)), "nested 302 levels"),
        "step": (lambda sk: sk.update(step=-5), "step is -5; expected an integer >= 0"),
        "bie": (lambda sk: sk["extra"].update(batch_in_epoch=10 ** 9), "extra.batch_in_epoch is 1000000000, more "
                                                                       "than the 1 steps"),
        "best": (lambda sk: sk["extra"].update(best="x"), "extra.best is 'x'"),
        "seconds": (lambda sk: sk["extra"].update(train_seconds="abc"), "extra.train_seconds is 'abc'"),
        "rng": (rng, "rng.python is 5"),
        "groups": (no_groups, "optimizer.param_groups is [];"),
        "tuple": (lambda sk: sk.update(rng={"$tuple": 5}), "malformed entry in its skeleton"),
        "step_other_save": (lambda sk: sk.update(step=7), "step is 7 but 1 in the weights file"),
    }
    return cases[name]


@pytest.mark.parametrize("name", ["deep", "step", "bie", "best", "seconds", "rng", "groups", "tuple",
                                  "step_other_save"])
def test_damaged_training_state_is_refused_before_resuming(pair, name):
    w, s = pair
    change, needle = _state_case(name)
    rewrite_safetensors(s, skeleton=change)
    model, opt = _model_and_opt()
    with pytest.raises(CheckpointError) as e:
        ckpt.load_checkpoint(w, model, optimizer=opt)
    msg = str(e.value)
    assert str(s) in msg and needle in msg and "\n" not in msg, msg


def test_rng_of_the_right_shape_but_unusable_is_a_checkpoint_error(pair):
    w, s = pair
    rewrite_safetensors(s, skeleton=lambda sk: sk["rng"]["numpy"]["$tuple"][1].update({"$ndarray": [1, 2, 3]}))  # not 624 words
    model, opt = _model_and_opt()
    with pytest.raises(CheckpointError, match=f"{s}: field rng cannot be restored"):
        ckpt.load_checkpoint(w, model, optimizer=opt)


@pytest.mark.parametrize("kind, kw, needle", [
    (torch.optim.SGD, {"momentum": 0.9}, "it is the state of another kind of optimizer (param_groups[0] has amsgrad, "
                                          "betas, eps; this one needs dampening, momentum, nesterov)"),
    (torch.optim.Adam, {}, "another kind of optimizer"),
])
def test_resume_refuses_the_state_of_another_optimizer(pair, kind, kw, needle):
    w, s = pair
    model, opt = _model_and_opt(kind, **kw)
    with pytest.raises(CheckpointError) as e:
        ckpt.load_checkpoint(w, model, optimizer=opt)
    msg = str(e.value)
    assert msg.startswith(f"training state {s} does not fit") and needle in msg, msg
    assert "optim.name=adamw: resume with --opt adamw" in msg and f"--init-weights {w}" in msg


def test_optimizer_state_with_other_shapes_or_groups_is_refused(pair):
    w, s = pair
    model = botnet.create_model("botnet_mini", **MINI_KW)
    params = list(model.parameters())
    two_groups = torch.optim.AdamW([{"params": params[:3]}, {"params": params[3:]}], lr=1e-3)
    with pytest.raises(CheckpointError, match="it has 1 parameter group"):
        ckpt.load_checkpoint(w, model, optimizer=two_groups)
    # the moments of parameter 0 given another shape: PyTorch would load them and fail at the step
    rewrite_safetensors(s, tensors=lambda ts: {k: (v[:1] if v.shape == params[0].shape else v) for k, v in ts.items()})
    with pytest.raises(CheckpointError, match=r"state\[0\]\.exp_avg has shape \(1, 1, 3, 3\)"):
        ckpt.load_checkpoint(w, model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3))


def test_int8_weights_are_refused_not_predicting_ten_percent_everywhere(pair):
    w, _ = pair
    rewrite_safetensors(w, tensors=lambda ts: {k: v.to(torch.int8) if v.is_floating_point() else v for k, v in ts.items()})
    with pytest.raises(CheckpointMismatchError, match=r"keys not floating point where the model.s are: "
                                                           r".* \(checkpoint int8 vs model float32\)") as e:
        ckpt.load_weights(botnet.create_model("botnet_mini", **MINI_KW), w)
    assert str(w) in str(e.value) and e.value.dtype_mismatch


# ----------------------------------------------------------------------------- published config.json
GOOD_CONFIG = {"architecture": "botnet_mini", "num_classes": 10, "label_names": [str(i) for i in range(10)],
               "model_args": {"in_chans": 1, "img_size": 28}, "pretrained_cfg": {"input_size": [1, 28, 28],
                                                                                 "mean": [0.3], "std": [0.35]},
               "botnet": {"task": "classification", "arch": "botnet_mini", "model_kwargs": {"num_classes": 10}}}


def _folder(tmp_path, cfg):
    (tmp_path / "config.json").write_text(cfg if isinstance(cfg, str) else json.dumps(cfg))
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "README.md").write_text("card\n")
    return tmp_path


@pytest.mark.parametrize("change, needle", [
    ('{"architecture": "botnet_mini", "x": ' + DEEP + "}", "is nested 5001 levels deep"),
    ({"label_names": 7}, "label_names is 7; expected a list"),
    ({"num_classes": "abc"}, "num_classes is 'abc'; expected an integer >= 1"),
    ({"model_args": [1]}, "model_args is [1]; expected a mapping"),
    ({"pretrained_cfg": {"std": [0]}}, "pretrained_cfg.std[0] is 0; expected a finite number > 0"),
    ({"pretrained_cfg": {"input_size": [1, 28]}}, "pretrained_cfg.input_size is [1, 28]"),
    ({"botnet": {"task": "segmentation"}}, "botnet.task is 'segmentation'"),
    ({"botnet": {"run_config": {"train": 5}}}, "botnet.run_config.train is 5; expected a mapping"),
])
def test_damaged_published_config_names_file_and_field(tmp_path, change, needle):
    cfg = change if isinstance(change, str) else {**GOOD_CONFIG, **change}
    folder = _folder(tmp_path, cfg)
    with pytest.raises(PublishedModelError) as e:
        read_config(folder)
    msg = str(e.value)
    assert str(folder / "config.json") in msg and needle in msg and "\n" not in msg, msg


def test_good_published_config_reads(tmp_path):
    assert read_config(_folder(tmp_path, GOOD_CONFIG))["num_classes"] == 10
