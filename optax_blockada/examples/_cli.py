"""Argument types shared by the examples' command lines."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

__all__ = ["float_in", "int_at_least"]


def int_at_least(minimum: int) -> Callable[[str], int]:
  """An ``argparse`` type: an integer no smaller than ``minimum``, else a clear error.

  Example:
    >>> import argparse
    >>> from optax_blockada.examples._cli import int_at_least
    >>> parser = argparse.ArgumentParser()
    >>> _ = parser.add_argument("--steps", type=int_at_least(1))
    >>> parser.parse_args(["--steps", "3"]).steps
    3
  """

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

  Example:
    >>> import argparse
    >>> from optax_blockada.examples._cli import float_in
    >>> parser = argparse.ArgumentParser()
    >>> _ = parser.add_argument("--lr", type=float_in(0, 10))
    >>> parser.parse_args(["--lr", "0.5"]).lr
    0.5
    >>> float_in(0, 10, label="a learning rate ")("nan")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: a learning rate must be in (0, 10], got nan
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
