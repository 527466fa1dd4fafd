"""export --out writes a new file or replaces an earlier botnet export (with --overwrite); a
checkpoint, a folder or any file export did not write is refused in one line (exit 2) before the
model is built, and every file around is left byte for byte."""
import os

import pytest
import torch
from torch import nn

import botnet
from botnet.cli import cmd_export
from botnet.engine import checkpoint as ckpt
from botnet.export import export_model, read_export_marker
from helpers import assert_one_line_error, run, tree

MINI_KW = {"widths": [4, 8, 8, 16], "stem_width": 8, "strides": [2, 2, 1, 1], "img_size": 28, "num_classes": 10,
           "in_chans": 1}


@pytest.fixture()
def run_dir(tmp_path):
    """A run folder: weights + training state, a .pt state dict, the config and a user's notes."""
    run = tmp_path / "run"
    model = botnet.create_model("botnet_mini", **MINI_KW)
    ckpt.save_checkpoint(run / "best.safetensors", model, arch="botnet_mini", model_kwargs=MINI_KW)
    torch.save(model.state_dict(), run / "weights.pt")
    (run / "config.json").write_text('{"model": {"name": "botnet_mini"}}\n')
    (run / "notes.txt").write_text("mine\n")
    return run


@pytest.fixture()
def no_build(monkeypatch):
    """Fails the test if the model is built: every refusal comes before."""
    def build(args):
        raise AssertionError("the model was built before --out was checked")

    monkeypatch.setattr(cmd_export, "_build", build)


@pytest.mark.parametrize("name, says", [
    ("best.safetensors", "is a checkpoint"), ("best.state.safetensors", "is a checkpoint"),
    ("weights.pt", "is a checkpoint"), ("config.json", "not written by botnet export"),
    ("notes.txt", "not written by botnet export")])
@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_existing_files_export_did_not_write_are_refused(run_dir, no_build, capsys, name, says, overwrite):
    before = tree(run_dir.parent)
    rc, _, err = run(capsys, ["export", "--checkpoint", run_dir, "--format", "torchscript", "--out", run_dir / name,
                           "--no-verify", *overwrite])
    assert_one_line_error(rc, err, f"--out {run_dir / name} ", says)
    assert tree(run_dir.parent) == before


@pytest.mark.parametrize("where, says", [
    ("run", "is a folder; give a file name"), ("new.safetensors", "named like a checkpoint"),
    ("notes.txt/m.ts", "cannot be created")])
def test_paths_of_the_wrong_kind_are_one_line(run_dir, no_build, capsys, where, says):
    out = run_dir.parent / where if where == "run" else run_dir / where
    before = tree(run_dir.parent)
    rc, _, err = run(capsys, ["export", "--checkpoint", run_dir, "--format", "onnx", "--out", out, "--no-verify"])
    assert_one_line_error(rc, err, f"--out {out} ", says)
    assert tree(run_dir.parent) == before


def test_an_earlier_export_is_replaced_only_with_overwrite(run_dir, tmp_path, capsys):
    out = tmp_path / "model.ts"
    args = ["export", "--checkpoint", run_dir, "--format", "torchscript", "--out", out, "--no-verify"]
    assert run(capsys, args)[0] == 0
    assert read_export_marker(out)["format"] == "torchscript"
    before = tree(tmp_path)
    rc, _, err = run(capsys, args)
    assert_one_line_error(rc, err, f"--out {out} ", "earlier botnet export", "--overwrite")
    assert tree(tmp_path) == before
    os.utime(out, (0, 0))
    assert run(capsys, [*args, "--overwrite"])[0] == 0
    assert out.stat().st_mtime > 0 and read_export_marker(out)["format"] == "torchscript"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ts", "run"]  # no temporary file left
    assert tree(run_dir) == {k[len("run/"):]: v for k, v in before.items() if k.startswith("run/")}


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 2, 3, stride=2)

    def forward(self, x):
        return self.c(x).mean((2, 3))


@pytest.mark.parametrize("fmt", ["onnx", "export"])
def test_every_format_carries_the_marker(tmp_path, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxscript")
        pytest.importorskip("onnx")
    path = export_model(_Tiny(), fmt, tmp_path / f"m.{fmt}", img_size=16, min_size=8)
    assert read_export_marker(path)["format"] == fmt
    with pytest.raises(botnet.errors.ConfigError, match="overwrite"):
        export_model(_Tiny(), fmt, path, img_size=16, min_size=8)
    export_model(_Tiny(), fmt, path, img_size=16, min_size=8, overwrite=True)
    assert read_export_marker(path)["format"] == fmt
