"""Argument checks shared by the examples: function arguments and command-line types."""

from __future__ import annotations

import argparse
import math
import numbers
from collections.abc import Callable

__all__ = ["check_int", "float_in", "int_at_least"]


def check_int(name: str, value: object, minimum: int) -> int:
  """Checks a function's integer argument: the examples' one rule for counts, sizes, seeds.

  Any ``numbers.Integral`` (Python or numpy integers) is accepted, ``bool`` is not.

  Args:
    name: the argument's name, as the caller spells it.
    value: what was passed.
    minimum: the smallest allowed value.

  Returns:
    ``value`` as a Python ``int``.

  Raises:
    TypeError: ``value`` is not an integer (the message names the argument, the value
      and its type).
    ValueError: ``value`` is below ``minimum`` (the message names the argument, the
      value and the smallest allowed one).
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
  """An ``argparse`` type: a finite number above ``low`` (or at it) and at most ``high``.

  Args:
    low: the lower bound, excluded unless ``include_low``.
    high: the upper bound, included; ``inf`` for none.
    include_low: whether ``low`` itself is allowed.
    label: what the message calls the value, e.g. ``'a learning rate '``.
  """

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
