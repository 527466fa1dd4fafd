"""The ``botnet`` command line.

Each sub-command lives in its own module ``botnet/cli/cmd_<name>.py`` exposing
``register(subparsers)``; that function adds a parser and sets ``func`` to a handler
``handler(args) -> int | None``. Heavy imports (torch, torchvision) belong inside the
handlers so ``botnet --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from botnet.errors import one_line


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse whose errors are one line (``error: ...``, exit code 2) naming the command's help."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="botnet",
        description="Bottleneck Transformers (BoTNet): models, training, detection, benchmarks and export.",
    )
    from botnet import __version__

    parser.add_argument("--version", action="version", version=f"botnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    pkg = importlib.import_module(__name__)
    names = sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if m.name.startswith("cmd_"))
    for name in names:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # A command whose positional list may also follow its options (``detect predict RUN --ann F a.jpg``)
        # names it; argparse alone takes positionals only before the first option.
        trailing = getattr(args, "trailing_positionals", None)
        if not trailing or any(x.startswith("-") for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        getattr(args, trailing).extend(extra)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from botnet.engine.devices import set_command_line
    from botnet.errors import UserInputError
    from botnet.log import setup_cli_logging

    setup_cli_logging()
    set_command_line(["botnet", *(sys.argv[1:] if argv is None else argv)])  # runs record how they were started
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except UserInputError as e:
        # bad input: one line naming the culprit, no traceback (anything else is a botnet bug)
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:
        line = out_of_memory_line(e)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 2
    return int(rc or 0)


_OOM_MARKERS = ("can't allocate memory", "CUDA out of memory", "out of memory")


def out_of_memory_line(e: BaseException) -> str | None:
    """One line for an allocation that failed (torch.OutOfMemoryError, MemoryError, the CPU
    allocator's RuntimeError), naming the size and what to lower; None for any other error."""
    import re

    text = " ".join(str(e).split())
    if not (isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError"
            or any(m in text for m in _OOM_MARKERS)):
        return None
    size = ""
    m = re.search(r"allocate (\d+) bytes", text)
    if m:
        size = f" of {int(m.group(1)) / 2**30:.2f} GB"
    else:
        m = re.search(r"[Tt]ried to allocate ([\d.]+ [KMGT]i?B)", text)
        size = f" of {m.group(1)}" if m else ""
    return (f"out of memory: an allocation{size} failed ({type(e).__name__}); lower --batch-size, --img-size "
            f"(or --scale for detect predict), or use a machine with more memory")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
