"""No file botnet reads can run code: a planted pickle is refused with a clear error and never executed."""
import os
import pickle
import re
import shutil
import warnings
from pathlib import Path

import pytest
import torch

import botnet
from botnet.cli import main
from botnet.engine import checkpoint as ckpt
from botnet.errors import CheckpointError


class _Planted:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _plant(path: Path, marker: Path, *, zip_format: bool) -> Path:
    if zip_format:  # torch.save's zip container, as a real .pth would be
        torch.save({"state_dict": _Planted(marker)}, path)
    else:  # a bare pickle stream
        path.write_bytes(pickle.dumps(_Planted(marker)))
    return path


def test_the_planted_file_really_runs_code_when_unpickled(tmp_path):
    # guards every test below: if loading this did nothing, "the marker is absent" would prove nothing
    marker = tmp_path / "ran"
    p = _plant(tmp_path / "x.pkl", marker, zip_format=False)
    pickle.loads(p.read_bytes())
    assert marker.exists()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny finished-but-resumable training run (max-steps stop) with EMA."""
    from botnet.data import fashion_mnist as fm

    if fm._complete(fm.SYSTEM_DIR) is None:
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    run = tmp_path_factory.mktemp("run") / "r"
    rc = main(["train", "--limit-train", "64", "--limit-val", "32", "--batch-size", "32", "--epochs", "2",
               "--max-steps", "1", "--ema", "--no-progress", "--no-plots", "--eval-every", "0", "--threads", "1",
               "--set", "model.kwargs={widths: [4, 8, 8, 16], stem_width: 8}", "--output", str(run)])
    assert rc == 0 and (run / "last.state.safetensors").is_file()
    return run


def _copy_run(run_dir, tmp_path) -> Path:
    d = tmp_path / "shared-run"
    shutil.copytree(run_dir, d)
    return d


@pytest.mark.parametrize("zip_format", [False, True])
def test_a_planted_state_pt_is_never_read(run_dir, tmp_path, capsys, zip_format):
    """A pickle named like a training state beside the weights: resume and EMA loading look only for
    last.state.safetensors, and the pickle given by name is a file of the wrong kind."""
    run, marker = _copy_run(run_dir, tmp_path), tmp_path / "ran"
    (run / "last.state.safetensors").unlink()
    planted = _plant(run / "last.state.pt", marker, zip_format=zip_format)
    for args, named in ((["train", "--resume", str(run), "--no-progress"], "last.state.safetensors"),
                        (["eval", str(run / "last.safetensors"), "--ema", "--no-progress", "--limit", "8"],
                         "last.state.safetensors"),
                        (["predict", str(run / "x.png"), "--checkpoint", str(run / "last.safetensors"), "--ema"],
                         "last.state.safetensors"),
                        (["train", "--resume", str(planted), "--no-progress"], str(planted))):
        capsys.readouterr()
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert named in err and len(err.strip().splitlines()) == 1, (args, err)
    assert not marker.exists()


def test_planted_pickle_under_the_new_state_name_is_refused(run_dir, tmp_path, capsys):
    run, marker = _copy_run(run_dir, tmp_path), tmp_path / "ran"
    _plant(run / "last.state.safetensors", marker, zip_format=True)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    assert "cannot read training state" in capsys.readouterr().err
    with pytest.raises(CheckpointError):
        ckpt.read_training_state(run / "last.state.safetensors")
    assert not marker.exists()


@pytest.mark.parametrize("zip_format", [False, True])
def test_planted_pth_weights_are_refused_everywhere(run_dir, tmp_path, capsys, zip_format):
    marker = tmp_path / "ran"
    pth = _plant(tmp_path / "weights.pth", marker, zip_format=zip_format)
    img = tmp_path / "x.png"
    from PIL import Image

    Image.new("L", (28, 28)).save(img)
    for args in (["eval", str(pth), "--no-progress"],
                 ["predict", str(img), "--checkpoint", str(pth)],
                 ["attention", str(img), "--checkpoint", str(pth), "--out", str(tmp_path / "att")],
                 ["export", "botnet_mini", "--format", "torchscript", "--out", str(tmp_path / "m.ts"),
                  "--checkpoint", str(pth)],
                 ["train", "--init-weights", str(pth), "--limit-train", "64", "--limit-val", "32", "--no-progress",
                  "--output", str(tmp_path / "t")]):
        capsys.readouterr()
        with warnings.catch_warnings(record=True) as caught:  # what a user's terminal would show too
            warnings.simplefilter("always")
            assert main(args) == 2, args
        err = capsys.readouterr().err
        assert str(pth) in err and len(err.strip().splitlines()) == 1, (args, err)
        assert not caught, (args, [str(w.message)[:120] for w in caught])
    model = botnet.create_model("resnet50", num_classes=10)
    with pytest.raises(Exception, match="(?i)weights.only|cannot read"):
        botnet.load_resnet_weights(model, pth)
    with pytest.raises(CheckpointError):
        ckpt.load_weights(model, pth)
    assert not marker.exists()
    assert not (tmp_path / "m.ts").exists() and not (tmp_path / "t" / "last.safetensors").exists()


def test_planted_backbone_weights_are_refused_by_detection(tmp_path, capsys):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "detection"))
    from detection_helpers import tiny_config_overrides

    marker = tmp_path / "ran"
    pth = _plant(tmp_path / "backbone.pth", marker, zip_format=True)
    sets = tiny_config_overrides(tmp_path / "mosaic", tmp_path / "det", epochs=1, num_train=4, num_val=2)
    args = ["detect", "train", "--config", "detection-fashion-mosaic"]
    for s in sets + [f"model.backbone_weights={pth}"]:
        args += ["--set", s]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(pth) in err
    assert not marker.exists() and not (tmp_path / "det" / "last.safetensors").exists()


def test_the_package_never_unpickles():
    src = Path(botnet.__file__).parent
    offenders = []
    for f in src.rglob("*.py"):
        text = f.read_text()
        if re.search(r"weights_only\s*=\s*False|pickle\.loads?\(|import pickle", text):
            offenders.append(str(f.relative_to(src)))
        for m in re.finditer(r"torch\.load\(", text):  # every call must say weights_only=True
            if "weights_only=True" not in text[m.end(): m.end() + 200].split("\n\n")[0]:
                offenders.append(f"{f.relative_to(src)}: {text[m.start(): m.start() + 60]!r}")
    assert offenders == []
