"""argparse value types that refuse out-of-range numbers at parse time (exit code 2, one line)."""
from __future__ import annotations

import argparse
import math

__all__ = ["positive_int", "nonneg_int", "positive_float", "nonneg_float", "unit_float", "threads"]


def _number(kind: type, text: str):
    try:
        v = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if kind is float and not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return v


def positive_int(text: str) -> int:
    v = _number(int, text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v} is not allowed: give an integer >= 1")
    return v


def nonneg_int(text: str) -> int:
    v = _number(int, text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"{v} is not allowed: give an integer >= 0")
    return v


def positive_float(text: str) -> float:
    v = _number(float, text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{v:g} is not allowed: give a number > 0")
    return v


def nonneg_float(text: str) -> float:
    v = _number(float, text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"{v:g} is not allowed: give a number >= 0")
    return v


def unit_float(text: str) -> float:
    v = _number(float, text)
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"{v:g} is not allowed: give a number between 0 and 1")
    return v


def threads(text: str) -> str:
    if text == "auto":
        return text
    return str(positive_int(text))
