"""``botnet --help`` and every ``botnet COMMAND --help`` load neither torch nor timm (they are the
seconds of a slow ``--help``); the commands import them inside their handlers."""
import os
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[2] / "src")
HEAVY = ("torch", "timm", "torchvision", "numpy", "matplotlib", "PIL")

# Run in a fresh interpreter: this one has imported torch already.
_SCRIPT = r"""
import argparse, contextlib, io, sys
from botnet.cli import build_parser, main

def commands(parser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + (name,)
                yield from commands(sub, prefix + (name,))

for cmd in [()] + list(commands(build_parser())):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main([*cmd, "--help"])
        except SystemExit as e:
            assert e.code == 0, (cmd, e.code)
    assert out.getvalue().startswith("usage: botnet"), cmd
    print(" ".join(cmd) or "(botnet)", sorted(m for m in HEAVY if m in sys.modules))
"""


def test_help_of_every_command_loads_no_torch_or_timm():
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", f"HEAVY = {HEAVY!r}\n" + _SCRIPT], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = dict(line.rsplit(" ", 1) for line in out.stdout.replace(", ", ",").splitlines())
    # every command, nested ones too, was asked for its help
    assert {"(botnet)", "train", "eval", "export", "models", "detect", "detect train", "detect predict"} <= set(lines)
    assert {cmd: loaded for cmd, loaded in lines.items() if loaded != "[]"} == {}
