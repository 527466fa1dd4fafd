"""`import botnet` alone gives the sub-packages the docs and `botnet publish` name (botnet.hub, ...), loads
no torch, and registers the models in timm."""
import os
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")

# Run in a fresh interpreter: in this one, other tests have imported the sub-packages already.
_SCRIPT = r"""
import sys
import botnet
loaded = sorted(m for m in ("botnet.hub", "botnet.engine", "botnet.export", "botnet.detection",
                            "botnet.classification", "botnet.data", "botnet.models", "torch", "timm")
                if m in sys.modules)
print("loaded-at-import", loaded)
import timm  # the models join timm's registry when timm is imported after botnet
print("timm", "botnet50" in timm.list_models("botnet*"), timm.create_model("botnet_mini", num_classes=3).fc.out_features)
try:
    botnet.hub.load_detector("no-such-folder")
except botnet.hub.PublishedModelError as e:
    print("hub-error", e)
print("engine", callable(botnet.engine.load_model), "export", callable(botnet.export.export_model))
print("same-module", botnet.hub is sys.modules["botnet.hub"])
print("in-dir", "hub" in dir(botnet))
try:
    botnet.no_such_thing
except AttributeError as e:
    print("attribute-error", e)
"""


def test_plain_import_reaches_hub_lazily():
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "loaded-at-import []"  # nothing heavy is imported by `import botnet` itself
    assert lines[1] == "timm True 3"
    assert lines[2].startswith("hub-error no-such-folder does not exist")
    assert lines[3:] == ["engine True export True", "same-module True",
                         "in-dir True", "attribute-error module 'botnet' has no attribute 'no_such_thing'"]


def test_models_join_timm_imported_before_botnet():
    script = ("import timm\nimport botnet\n"
              "print('botnet50' in timm.list_models('botnet*'), timm.create_model('botnet_mini').fc.out_features)")
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "1000"]  # the default head
