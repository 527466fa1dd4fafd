"""Dependencies point one way: every import in the package goes to its own package or a lower layer.

Each module's imports are read with ``ast`` (the ones inside functions too, ``from botnet import
x``, and ``importlib.import_module("botnet.x")`` with a literal name), mapped to their packages'
layers, and any edge to the same or a higher layer of another package fails, naming the file, the
line and both layers. The table is the picture in CONTRIBUTING.md.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "botnet"

# Lowest first. A package may import its own modules and the packages of lower layers; packages
# that share a layer are independent of each other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "lazy"),
    ("validation", "log"),
    ("tasks",),
    ("io",),
    ("layers", "viz"),
    ("models",),
    ("data",),
    ("engine",),
    ("classification", "detection"),
    ("hub",),
    ("export",),
    ("bench",),  # measures exported models too
    ("cli",),
    ("botnet",),  # the package itself (__init__, __main__): lazy re-exports over every layer
)
RANK = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}

# Names looked up at run time from a name in data, not imported by a fixed edge: the task registry
# finds a task named by a checkpoint in botnet's package of that name when the installed entry
# points do not list it, so a task is found without anything below it knowing it.
RUNTIME_LOOKUPS = {("botnet/tasks.py", "botnet.{name}")}


def _package(module: str) -> str:
    """``botnet.engine.checkpoint`` -> ``engine``; ``botnet`` and ``botnet.__main__`` -> ``botnet``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] != "__main__" else "botnet"


def _module_of(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_subpackage(name: str) -> bool:
    return (PKG / name).is_dir() or (PKG / f"{name}.py").is_file()


def _dynamic_name(node: ast.Call) -> str | None:
    """The module name of ``importlib.import_module(...)`` / ``__import__(...)``: a literal, or an
    f-string shown with ``{...}`` for its parts (``f"botnet.{task}"`` -> ``botnet.{task}``)."""
    fn = node.func
    name = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else None
    if name not in ("import_module", "__import__") or not node.args:
        return None
    arg = node.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{" + ast.unparse(v.value) + "}"
                       for v in arg.values)
    return None


def imports_of(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """``(line, imported botnet module)`` for every import in ``source`` (the module ``module``).

    ``from botnet import x`` counts as importing ``botnet.x`` when ``x`` is a sub-package, and as
    the package itself otherwise, except ``__version__`` (a constant of the package that imports
    nothing to define it).
    """
    pkg = module if is_package else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            if base == "botnet":
                for a in node.names:
                    if a.name != "__version__":
                        out.append((node.lineno, f"botnet.{a.name}" if _is_subpackage(a.name) else "botnet"))
            else:
                out.append((node.lineno, base))
        elif isinstance(node, ast.Call):
            name = _dynamic_name(node)
            if name is not None:
                out.append((node.lineno, name))
    return [(line, name) for line, name in out if name == "botnet" or name.startswith("botnet.")]


def violations(source: str, where: str, module: str, is_package: bool = False) -> list[str]:
    """One line per import in ``source`` that does not point down (``where`` names the file)."""
    own = _package(module)
    found = []
    for line, target in imports_of(source, module, is_package):
        if (where, target) in RUNTIME_LOOKUPS:
            continue
        if "{" in target:
            found.append(f"{where}:{line} imports {target}, a name made at run time: import a fixed module, or list "
                         f"it in RUNTIME_LOOKUPS with the reason")
            continue
        other = _package(target)
        if other == own:
            continue
        if own not in RANK or other not in RANK:
            unknown = own if own not in RANK else other
            found.append(f"{where}:{line}: package {unknown!r} has no layer; add it to LAYERS (and CONTRIBUTING.md)")
        elif RANK[other] >= RANK[own]:
            how = "the same layer as" if RANK[other] == RANK[own] else "a higher layer than"
            found.append(f"{where}:{line} imports {target}: {own} (layer {RANK[own]}) may not import {other} "
                         f"(layer {RANK[other]}), {how} its own")
    return found


def _package_files() -> list[Path]:
    return sorted(PKG.rglob("*.py"))


def test_every_import_points_down():
    found = []
    for path in _package_files():
        where = path.relative_to(SRC).as_posix()
        found += violations(path.read_text(), where, _module_of(path), is_package=path.name == "__init__.py")
    assert not found, "imports that point up:\n" + "\n".join(found)


def test_every_package_has_a_layer():
    packages = {p.name if p.is_dir() else p.stem for p in PKG.iterdir()
                if (p.is_dir() and any(p.glob("*.py"))) or (p.suffix == ".py" and p.stem != "__init__")}
    packages.discard("__main__")
    assert packages - set(RANK) == set()
    assert set(RANK) - packages == {"botnet"}  # no layer names a package that is gone


@pytest.mark.parametrize("source, line, target, layers", [
    ("from botnet.hub.load import load_detector\n", 1, "botnet.hub.load", "models (layer 5) may not import hub (layer 9)"),
    ("def f():\n    from botnet.engine import checkpoint\n", 2, "botnet.engine", "models (layer 5) may not import engine"),
    ("import importlib\nm = importlib.import_module('botnet.cli')\n", 2, "botnet.cli", "may not import cli (layer 12)"),
    ("from botnet import data\n", 1, "botnet.data", "models (layer 5) may not import data (layer 6)"),
    ("import botnet\n", 1, "botnet", "models (layer 5) may not import botnet (layer 13)"),
    ("from botnet import create_model\n", 1, "botnet", "may not import botnet (layer 13)"),
    ("from ..hub import load\n", 1, "botnet.hub", "models (layer 5) may not import hub (layer 9), a higher layer"),
])
def test_an_upward_edge_is_named(source, line, target, layers):
    """The check itself can fail: a synthetic module of botnet.models with one bad import."""
    found = violations(source, "botnet/models/x.py", "botnet.models.x")
    assert len(found) == 1
    assert found[0].startswith(f"botnet/models/x.py:{line} imports {target}: ")
    assert layers in found[0]


def test_packages_of_one_layer_are_independent():
    source = "from botnet.detection.models import build_detector\n"
    assert violations(source, "botnet/hub/x.py", "botnet.hub.x") == []
    assert violations(source, "botnet/classification/x.py", "botnet.classification.x") == [
        "botnet/classification/x.py:1 imports botnet.detection.models: classification (layer 8) may not import "
        "detection (layer 8), the same layer as its own"]


def test_what_is_not_an_upward_edge():
    ok = ("from botnet import __version__\nfrom botnet.models import limits\nfrom botnet.io.weights import read_weights\n"
          "from . import botnet as b\nfrom botnet.layers import RelPosMHSA\nimport torch\n")
    assert violations(ok, "botnet/models/x.py", "botnet.models.x") == []
    made = "import importlib\nimportlib.import_module(f'botnet.{name}')\n"
    assert violations(made, "botnet/tasks.py", "botnet.tasks") == []  # the listed lookup
    assert "a name made at run time" in violations(made, "botnet/data/x.py", "botnet.data.x")[0]
