"""The tasks botnet trains, by name: each registers itself once, here.

A task is a :class:`botnet.engine.Task` subclass (its model builder, config section, steps,
evaluation and publishing). Registering it takes a :class:`TaskSpec`: its name (recorded in
every checkpoint), the command group the command line makes for it (``botnet COMMAND train|eval``)
and where its class lives, as a ``"module:attribute"`` string, so that listing the tasks (for
``botnet --help``) imports nothing heavy.

A package outside botnet registers its tasks through the ``botnet.tasks`` entry-point group
(``name = "package.module:SPEC"``), as botnet's own tasks do, or by calling :func:`register_task`
before the command line or the engine needs them. Nothing in botnet names a task.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

__all__ = ["TaskSpec", "register_task", "task_specs", "get_spec", "is_task", "load_task", "config_schema",
           "resolve"]

ENTRY_POINT_GROUP = "botnet.tasks"


@dataclass(frozen=True)
class TaskSpec:
    name: str                   # recorded in checkpoints and published folders
    task: str                   # "module:Class" of its botnet.engine.Task subclass
    command: str = ""           # its command group (default: the name); botnet's own commands keep their names
    help: str = ""
    generated: bool = True      # False: the command line has hand-written commands for it (botnet train, detect)
    train_cmd: str = ""         # the command that trains it, for model cards (default: botnet COMMAND train)
    schema: str = ""            # "module:attribute" of its declared config (botnet.engine.schema_decl.Schema),
                                # importable without torch: the command line's flags and --help come from it

    @property
    def cli_name(self) -> str:
        return self.command or self.name

    @property
    def train_command(self) -> str:
        return self.train_cmd or f"botnet {self.cli_name} train"


_SPECS: dict[str, TaskSpec] = {}
_LOADED_ENTRY_POINTS = False
_INSTANCES: dict[str, Any] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Make ``spec`` known (again: the latest registration of a name wins)."""
    if not isinstance(spec, TaskSpec):
        raise TypeError(f"register_task takes a TaskSpec, got {type(spec).__name__}")
    _SPECS[spec.name] = spec
    _INSTANCES.pop(spec.name, None)
    return spec


def _load_entry_points() -> None:
    global _LOADED_ENTRY_POINTS
    if _LOADED_ENTRY_POINTS:
        return
    _LOADED_ENTRY_POINTS = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _SPECS:  # a registration in this process wins over an installed one
            continue
        try:
            spec = ep.load()
        except Exception as e:  # another package's bug must not take botnet's own commands down with it
            from botnet.log import get_logger

            get_logger("tasks").warning(f"task {ep.name!r} of {ep.value} could not be loaded ({type(e).__name__}: "
                                        f"{' '.join(str(e).split())[:160]}); it is left out")
            continue
        if isinstance(spec, TaskSpec):
            _SPECS[spec.name] = spec


def task_specs() -> list[TaskSpec]:
    """Every registered task, in name order."""
    _load_entry_points()
    return [_SPECS[k] for k in sorted(_SPECS)]


def get_spec(name: str) -> TaskSpec:
    _load_entry_points()
    if name not in _SPECS and name.isidentifier():  # an install whose entry points are stale: botnet's own package
        try:
            spec = getattr(importlib.import_module(f"botnet.{name}"), "SPEC", None)
        except ImportError:
            spec = None
        if isinstance(spec, TaskSpec):
            _SPECS[name] = spec
    if name not in _SPECS:
        from botnet.errors import CheckpointError

        raise CheckpointError(f"task {name!r} is not registered in this botnet (known: {', '.join(sorted(_SPECS))}); "
                              f"install or import the package that provides it")
    return _SPECS[name]


def is_task(name: Any) -> bool:
    """True when ``name`` is a registered task (a checkpoint's or a published folder's)."""
    from botnet.errors import CheckpointError

    try:
        return isinstance(name, str) and get_spec(name) is not None
    except CheckpointError:
        return False


def resolve(target: str) -> Any:
    """The object a ``"module:attribute"`` string names."""
    module, _, attr = target.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split(".") if attr else []:
        obj = getattr(obj, part)
    return obj


def config_schema(name: str) -> Any:
    """The declared config (``Schema``) of a registered task, or None when it declares none."""
    spec = get_spec(name)
    return resolve(spec.schema) if spec.schema else None


def load_task(name: str):
    """The task's :class:`botnet.engine.Task` instance (one per process)."""
    if name not in _INSTANCES:
        _INSTANCES[name] = resolve(get_spec(name).task)()
    return _INSTANCES[name]
