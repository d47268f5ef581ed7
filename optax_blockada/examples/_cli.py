"""Argument types shared by the examples' command lines."""

from __future__ import annotations

import argparse
from collections.abc import Callable

__all__ = ["int_at_least"]


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
