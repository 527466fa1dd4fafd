"""Issue 18, item 4 and two failures of item 6 through ``botnet.cli.main``: inputs that would take
unbounded memory or time (model sizes, YAML bombs, worker counts, wrong kinds of paths, failed
allocations) end in one line naming the culprit, with exit code 2, before any work."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import botnet
from botnet.cli import main
from botnet.engine import checkpoint as ckpt
import helpers
from helpers import run, table_failures

MINI_KW = {"widths": [4, 8, 8, 16], "stem_width": 8, "strides": [2, 2, 1, 1], "img_size": 28, "num_classes": 10,
           "in_chans": 1}
LAUGHS = "".join(f"{b}: &{b} [{','.join(['*' + a] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi"))
LAUGHS = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + LAUGHS  # ~350 bytes, 10^9 leaves


def assert_one_line_error(rc, err, *needles):
    """Lines naming a lowered setting (``data.num_workers: 48 -> 2``) may come before the error."""
    helpers.assert_one_line_error(rc, err, *needles, log_prefixes=("train.", "data."))


@pytest.fixture(autouse=True)
def _limit(monkeypatch):
    monkeypatch.setenv("BOTNET_MODEL_MEMORY_GB", "8")  # the same verdicts on every machine


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bounds")
    f = {"dir": d, "ckpt": d / "mini.safetensors", "img": d / "ok.png", "fifo": d / "x.png",
         "empty": d / "empty.png", "text": d / "notes.png", "lol": d / "lol.yaml"}
    ckpt.save_checkpoint(f["ckpt"], botnet.create_model("botnet_mini", **MINI_KW), arch="botnet_mini",
                         model_kwargs=MINI_KW, save_state=False)
    Image.new("L", (28, 28)).save(f["img"])
    os.mkfifo(f["fifo"])
    f["empty"].write_bytes(b"")
    f["text"].write_text("not an image\n")
    f["lol"].write_text(LAUGHS)
    # a published folder whose config.json asks for a model no machine here can hold
    pub = d / "published"
    pub.mkdir()
    kw = {**MINI_KW, "widths": [8192] * 4}
    (pub / "config.json").write_text(json.dumps({
        "architecture": "botnet_mini", "num_classes": 10, "num_features": 32768, "global_pool": "avg",
        "model_args": {k: v for k, v in kw.items()},
        "pretrained_cfg": {"input_size": [1, 28, 28], "mean": [0.5], "std": [0.5], "num_classes": 10,
                           "crop_pct": 1.0, "interpolation": "bilinear", "first_conv": "conv1", "classifier": "fc"},
        "botnet": {"format": "botnet-published-v1", "task": "classification", "arch": "botnet_mini",
                   "model_kwargs": kw, "weights": "raw"}}))
    (pub / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    (pub / "README.md").write_text("# huge\n")
    f["pub"] = pub
    return f


def _table(f):
    d, ck = f["dir"], f["ckpt"]
    return [
        # model sizes, at every entry point
        (["train", "--set", "model.kwargs.layers=[200000,1,1,1]"], ["layers", "200003 blocks", "at most 1000"]),
        (["train", "--set", "model.kwargs.widths=[65536,65536,65536,65536]"], ["widths", "at most 16384"]),
        (["train", "--set", "model.kwargs.widths=[4096,4096,4096,4096]"], ["GB", "limit of 8.0 GB", "lower"]),
        (["train", "--img-size", "20000"], ["20000 px", "GB", "--img-size"]),
        (["detect", "train", "--set", "model.kwargs.widths=[65536,65536,65536,65536]"], ["widths"]),
        (["export", "botnet_mini", "--format", "torchscript", "--out", d / "m.ts", "--img-size", "60000"],
         ["--img-size", "60000"]),
        (["export", "botnet_mini", "--format", "torchscript", "--out", d / "m.ts", "--img-size", "12000"],
         ["12000 px", "GB", "--img-size"]),
        (["predict", f["img"], "--checkpoint", f["pub"]], ["8192", "lower"]),
        (["eval", f["pub"]], ["8192", "lower"]),
        (["detect", "predict", ck, f["img"], "--scale", "100000", "--output", d / "pred"],
         ["--scale 100000", "lower --scale"]),
        # YAML: a billion laughs in a recipe and in --set; nesting
        (["train", "--config", f["lol"]], [str(f["lol"]), "aliases"]),
        (["train", "--set", "model.kwargs.x=" + "[" * 200 + "]" * 200], ["--set", "deeper than 64"]),
        # only regular files are opened as images
        (["predict", f["fifo"], "--checkpoint", ck], [str(f["fifo"]), "FIFO"]),
        (["attention", f["fifo"], "--checkpoint", ck, "--output", d / "att"], [str(f["fifo"]), "FIFO"]),
        (["detect", "predict", ck, f["img"], f["empty"], "--output", d / "pred"], [str(f["empty"]), "0 bytes"]),
        (["detect", "predict", ck, f["text"], "--output", d / "pred"], [str(f["text"]), "not an image"]),
        (["detect", "predict", ck, f["fifo"], "--output", d / "pred"], [str(f["fifo"]), "FIFO"]),
        # paths of the wrong kind
        (["eval", ck, "--json", d], ["--json", str(d), "is a folder"]),
        (["export", "botnet_mini", "--format", "torchscript", "--out", d], ["--out", "is a folder"]),
        (["export", "botnet_mini", "--format", "torchscript", "--out", f["img"] / "m.ts"], ["--out", "is not a folder"]),
        (["eval", ck, "--confusion", d], ["--confusion", "is a folder"]),
        (["predict", f["img"], "--checkpoint", ck, "--json", d], ["--json", "is a folder"]),
        (["attention", f["img"], "--checkpoint", ck, "--output", f["img"]], ["--output", "is a file"]),
        (["detect", "predict", ck, f["img"], "--output", f["img"]], ["--output", "is a file"]),
        (["detect", "eval", ck, "--output", f["img"]], ["--output", "is a file"]),
    ]


def test_every_unbounded_input_is_one_line(files, capsys):
    before = sorted(p.name for p in files["dir"].iterdir())
    assert table_failures(capsys, _table(files), check=assert_one_line_error) == []
    assert sorted(p.name for p in files["dir"].iterdir()) == before  # nothing written


def test_timm_local_dir_refuses_a_huge_published_model(files):
    import timm

    from botnet.errors import UserInputError
    from botnet.models.limits import ModelTooLargeError

    with pytest.raises(ModelTooLargeError, match=r"widths=\[8192.*limit of 8.0 GB"):
        timm.create_model(f"local-dir:{files['pub']}", pretrained=True)
    with pytest.raises(UserInputError, match="limit of 8.0 GB"):
        botnet.create_model("botnet_mini", pretrained=str(files["pub"]))


def test_the_papers_models_pass_the_check(monkeypatch):
    from botnet.models.limits import check_model, footprint, _resnet_cfg

    monkeypatch.setenv("BOTNET_MODEL_MEMORY_GB", "16")  # an ordinary machine
    check_model("botnet_s1_128", {"img_size": 384})  # T7
    for name in ("botnet50", "botnet101", "botnet152", "botnet200"):
        check_model(name, {"img_size": 1024, "num_classes": 0})  # the detection backbones at 1024 px
    params, acts = footprint(_resnet_cfg("botnet50", {}), num_classes=1000)
    assert params == 4 * sum(p.numel() for p in botnet.create_model("botnet50", device="meta").parameters())
    assert 0 < acts < 2**30


def test_stored_num_workers_is_clamped_to_the_machine(files, caplog):
    from botnet.classification.config import CLASSIFICATION_DEFAULTS
    from botnet.data.builder import build_eval_loader, num_workers
    from botnet.engine.config import merge

    cfg = merge(CLASSIFICATION_DEFAULTS, {"data": {"num_workers": 48}})
    cores = len(os.sched_getaffinity(0))
    with caplog.at_level("INFO"):
        assert num_workers(cfg) == min(48, cores)
    if cores < 48:
        assert "data.num_workers 48 ->" in caplog.text
    loader = build_eval_loader(list(range(4)), cfg)
    assert loader.num_workers <= cores


def _overcommit_refuses_huge() -> bool:
    try:
        return Path("/proc/sys/vm/overcommit_memory").read_text().strip() != "1"
    except OSError:
        return False


@pytest.mark.skipif(not _overcommit_refuses_huge(), reason="vm.overcommit_memory=1 grants any allocation")
def test_allocation_that_fails_mid_run_names_the_size(monkeypatch, tmp_path, capsys):
    from botnet.data import fashion_mnist as fm

    if fm._complete(fm.SYSTEM_DIR) is None:
        pytest.skip("Fashion-MNIST not installed")
    monkeypatch.setenv("BOTNET_MODEL_MEMORY_GB", "1000000")  # past the up-front check: the batch itself fails
    rc, _, err = run(capsys, ["train", "--img-size", "20000", "--batch-size", "32", "--limit-train", "64",
                              "--limit-val", "32", "--no-progress", "--no-plots", "--threads", "1",
                              "--output", tmp_path / "r", "--set", "model.kwargs={widths: [4, 8, 8, 16]}"])
    assert_one_line_error(rc, err, "out of memory", "GB", "--batch-size", "--img-size")


def test_failed_allocation_is_one_line(monkeypatch, capsys):
    import botnet.cli.cmd_models as cm

    def alloc(_args):
        torch.empty(1 << 62, dtype=torch.uint8)  # 4 EiB: refused at once by any allocator

    monkeypatch.setattr(cm, "run", alloc)
    rc, _, err = run(capsys, ["models"])
    assert_one_line_error(rc, err, "out of memory", "--batch-size", "--img-size")

    def oom(_args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79 GiB total)")

    monkeypatch.setattr(cm, "run", oom)
    rc, _, err = run(capsys, ["models"])
    assert_one_line_error(rc, err, "20.00 GiB", "--batch-size")

    def bug(_args):
        raise RuntimeError("a botnet bug")

    monkeypatch.setattr(cm, "run", bug)
    with pytest.raises(RuntimeError, match="a botnet bug"):  # other errors keep their traceback
        main(["models"])


def _child_rss_mb(tmp_path, args) -> tuple[int, int, int, str]:
    """``botnet ARGS`` in a child: (exit code, its RSS in MB after ``import botnet`` (the baseline),
    its peak RSS in MB (os.wait4's rusage of that child alone), stderr)."""
    code = ("import resource, sys; import botnet, botnet.cli; "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True); "
            f"sys.exit(botnet.cli.main({[str(a) for a in args]!r}))")
    env = {**os.environ, "PYTHONPATH": str(Path(botnet.__file__).parents[1])}
    p = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    out, err = p.stdout.read().decode(), p.stderr.read().decode()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, int(out.split()[0]) // 1024, usage.ru_maxrss // 1024, err


def test_bombs_stay_small_in_memory(tmp_path):
    """A YAML bomb and an image size no machine holds, in a child: peak RSS < start-up + 2 GB."""
    (tmp_path / "lol.yaml").write_text(LAUGHS)
    for args in (["train", "--config", "lol.yaml"], ["train", "--img-size", "20000", "--no-progress"]):
        rc, base, peak, err = _child_rss_mb(tmp_path, args)
        assert rc == 2 and "Traceback" not in err and "error:" in err, err
        assert peak - base < 2048, (args, base, peak)
