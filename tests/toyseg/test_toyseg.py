"""Acceptance of the task plug-in: a toy segmentation task, defined only in this package, trains,
resumes exactly, evaluates, publishes and reloads through botnet's own commands and loaders."""
import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import toyseg.task  # noqa: F401  (registers the task, as a plug-in's import or entry point does)
from botnet.cli import main
from botnet.engine import load_model

ARGS = ["toyseg", "train", "--no-progress", "--no-plots", "--threads", "1", "--deterministic"]
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def _records(run: Path, phase: str) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["phase"] == phase]


def test_trains_resumes_evaluates_publishes_and_reloads(tmp_path, capsys):
    a, b, pub = tmp_path / "a", tmp_path / "b", tmp_path / "published"
    # trains: the loss falls, the IoU is measured each epoch and best.safetensors follows it
    assert main(ARGS + ["--output", str(a), "--set", "train.log_every=1"]) == 0
    losses = [r["loss"] for r in _records(a, "train")]
    assert len(losses) == 24 and sum(losses[-4:]) < 0.7 * sum(losses[:4])
    val = _records(a, "val")
    assert len(val) == 3
    summary = json.loads((a / "summary.json").read_text())
    assert summary["task"] == "toyseg" and summary["status"] == "completed"
    assert summary["best"]["metric"] == "miou" and summary["best"]["value"] == max(r["miou"] for r in val)
    assert summary["final"]["raw"]["miou"] > 60.0

    # resumes exactly: stopped after 5 of 24 steps (mid-epoch), then continued, it ends on the same weights
    assert main(ARGS + ["--output", str(b), "--max-steps", "5"]) == 0
    assert main(ARGS + ["--resume", str(b), "--set", "train.max_steps=null"]) == 0
    wa, wb = load_file(a / "last.safetensors"), load_file(b / "last.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)

    # evaluates: `botnet toyseg eval RUN` measures what the run's final evaluation measured
    capsys.readouterr()
    out_json = tmp_path / "eval.json"
    assert main(["toyseg", "eval", str(a / "last.safetensors"), "--json", str(out_json)]) == 0
    assert json.loads(out_json.read_text())["miou"] == summary["final"]["raw"]["miou"]
    assert "miou" in capsys.readouterr().out

    # publishes and reloads: the published folder rebuilds the same model
    assert main(["publish", str(a), str(pub), "--weights", "last"]) == 0
    config = json.loads((pub / "config.json").read_text())
    assert config["botnet"]["task"] == "toyseg" and config["architecture"] == "toyseg_net"
    assert (pub / "README.md").is_file() and (pub / "model.safetensors").is_file()
    m_run, _ = load_model(a / "last.safetensors")
    m_pub, meta = load_model(pub)
    assert meta["task"] == "toyseg"
    x = torch.rand(2, 1, 16, 16)
    assert torch.equal(m_run(x), m_pub(x))


def test_the_task_touches_nothing_outside_its_package():
    """No code, recipe, script or packaging file of botnet names the toy task: it plugs in from here alone (the
    docs point to it as the example; other tests use it as a task that needs no data set installed)."""
    hits = subprocess.run(["git", "grep", "--untracked", "-l", "-i", "toyseg", "--", "src", "configs", "scripts",
                           "benchmarks", "pyproject.toml", ".ci"], cwd=ROOT, capture_output=True, text=True)
    assert hits.returncode == 1 and hits.stdout == "", hits.stdout


def test_its_declared_config_gives_its_flags_checks_and_print_config(tmp_path, capsys):
    assert main(["toyseg", "train", "--num-classes", "3", "--width", "12", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "num_classes: 3  # --num-classes" in out and "width: 12  # --width" in out and "seg:" in out
    assert main(["toyseg", "train", "--set", "model.heads=5", "--output", str(tmp_path / "r")]) == 2
    assert "model.heads = 5 does not divide model.width = 8" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:  # refused while the flags are parsed: one line naming the flag
        main(["toyseg", "train", "--num-classes", "1"])
    assert refused.value.code == 2 and "--num-classes" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    with pytest.raises(SystemExit):
        main(["toyseg", "train", "--help"])
    assert "--num-classes" in capsys.readouterr().out


def test_an_installed_package_registers_it_through_its_entry_point(tmp_path):
    """No import, no register_task call: an installed distribution's `botnet.tasks` entry point is enough."""
    import os
    import sys

    dist = tmp_path / "toyseg_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toyseg-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[botnet.tasks]\ntoyseg = toyseg.task:SPEC\n")
    path = [str(tmp_path), str(HERE.parent), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    top = subprocess.run([sys.executable, "-m", "botnet.cli", "--help"], env=env, capture_output=True, text=True)
    assert top.returncode == 0 and "toyseg" in top.stdout
    sub = subprocess.run([sys.executable, "-m", "botnet.cli", "toyseg", "train", "--help"], env=env,
                         capture_output=True, text=True)
    assert sub.returncode == 0 and "--num-classes" in sub.stdout and "[seg.num_classes]" in sub.stdout


def test_a_broken_installed_task_is_left_out_with_a_warning(tmp_path):
    """Another package's broken entry point costs its own task, not botnet's commands."""
    import os
    import sys

    dist = tmp_path / "broken_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[botnet.tasks]\nbroken = no_such_module_here:SPEC\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    top = subprocess.run([sys.executable, "-m", "botnet.cli", "--help"], env=env, capture_output=True, text=True)
    assert top.returncode == 0 and "detect" in top.stdout
    assert "task 'broken'" in top.stderr and "left out" in top.stderr
