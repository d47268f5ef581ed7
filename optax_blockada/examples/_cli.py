"""Argument checks shared by the examples: function arguments and command-line types."""

from __future__ import annotations

import argparse
import math
import numbers
from collections.abc import Callable

__all__ = ["check_int", "float_in", "int_at_least"]


def check_int(name: str, value: object, minimum: int) -> int:
  """Checks a function's integer argument: the examples' one rule for counts, sizes, seeds.

  Returns ``value`` as an ``int``. TypeError unless a ``numbers.Integral`` (Python or
  numpy, not ``bool``), ValueError below ``minimum``; the messages name argument and fix.
  """
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    hint = ""
    if isinstance(value, float) and value.is_integer() and value >= minimum:
      hint = f", e.g. {int(value)}"
    raise TypeError(
      f"{name} must be an integer, got {value!r} (a {type(value).__name__}); "
      f"pass an int >= {minimum}{hint}."
    )
  if value < minimum:
    raise ValueError(f"{name} must be >= {minimum}, got {value}; pass an int >= {minimum}.")
  return int(value)


def int_at_least(minimum: int) -> Callable[[str], int]:
  """An ``argparse`` type: an integer no smaller than ``minimum``, else a clear error."""

  def parse(text: str) -> int:
    try:
      value = int(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < minimum:
      raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
    return value

  parse.__name__ = f"integer >= {minimum}"
  return parse


def float_in(
  low: float, high: float = math.inf, *, include_low: bool = False, label: str = ""
) -> Callable[[str], float]:
  """An ``argparse`` type: a finite number above ``low`` (or at it if ``include_low``) and
  at most ``high``; ``label`` names the value in the message, e.g. ``'a learning rate '``."""

  def parse(text: str) -> float:
    try:
      value = float(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    above = value >= low if include_low else value > low
    if not (math.isfinite(value) and above and value <= high):
      if math.isinf(high):
        bound = f"a finite number {'>=' if include_low else '>'} {low:g}"
        raise argparse.ArgumentTypeError(f"{label}must be {bound}, got {text}")
      interval = f"{'[' if include_low else '('}{low:g}, {high:g}]"
      raise argparse.ArgumentTypeError(f"{label}must be in {interval}, got {text}")
    return value

  parse.__name__ = "number"
  return parse
