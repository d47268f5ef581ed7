"""Reading compiled HLO: the collectives of a step and the bytes they move per device.

Used by the tests and benchmarks of the routed sparse step, which count what crosses
between devices from ``jax.jit(f).lower(...).compile().as_text()``, without running it.
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

__all__ = ["Collective", "collectives"]

_KINDS = ("all-to-all", "all-gather", "all-reduce", "reduce-scatter", "collective-permute")
_LINE = re.compile(
  r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(?P<result>.+?)\s+"
  r"(?P<kind>" + "|".join(_KINDS) + r")(?P<start>-start)?\((?P<rest>.*)$"
)
_ARRAY = re.compile(r"\b(?P<dtype>pred|[a-z]+\d+)\[(?P<dims>[\d,]*)\]")
_BITS = {"pred": 8}
_GROUPS_IOTA = re.compile(r"replica_groups=\[(?P<dims>[\d,]+)\]<=")
_GROUPS_LIST = re.compile(r"replica_groups=\{\{(?P<first>[\d,]*)\}")
# replica_groups=mesh['x'=2,'y'=4] {'y'}: groups along the named axes.
_GROUPS_MESH = re.compile(r"replica_groups=mesh\[(?P<axes>[^\]]*)\]\s*\{(?P<along>[^}]*)\}")
_BRANCH = re.compile(r"/branch_(?P<index>\d+)_fun/")


class Collective(NamedTuple):
  """One collective of a compiled HLO module, on one device."""

  kind: str  # all-to-all, all-gather, all-reduce, reduce-scatter, collective-permute
  shapes: tuple[tuple[int, ...], ...]  # its result arrays
  result_bytes: int  # bytes of its result on one device
  group_size: int  # devices in its replica group (0 if not stated)
  branch: int | None  # the lax.cond branch index it runs in (None: unconditional)

  @property
  def moved_bytes(self) -> float:
    """Bytes one device sends, by the ring model: all-to-all and all-gather send
    ``(k - 1) / k`` of their result, all-reduce twice that, for groups of ``k``."""
    k = self.group_size
    if k <= 1:
      return 0.0
    share = (k - 1) / k
    if self.kind == "all-reduce":
      return 2 * share * self.result_bytes
    if self.kind == "reduce-scatter":
      return share * self.result_bytes * k
    return share * self.result_bytes


def _bits(dtype: str) -> int:
  if dtype in _BITS:
    return _BITS[dtype]
  return int(re.sub(r"^[a-z]+", "", dtype))


def collectives(hlo_text: str) -> list[Collective]:
  """The collectives in compiled HLO text, in order of appearance.

  Args:
    hlo_text: ``compiled.as_text()`` of a jitted function.

  Returns:
    A list of :class:`Collective`; the ``-done`` halves of asynchronous collectives are
    not counted twice.

  Example:
    >>> from optax_blockada._hlo import collectives
    >>> line = ('%all-gather = s32[8,16]{1,0} all-gather(%x), channel_id=1, '
    ...         'replica_groups=[1,8]<=[8], dimensions={0}')
    >>> collectives(line)
    [Collective(kind='all-gather', shapes=((8, 16),), result_bytes=512, group_size=8, branch=None)]
    >>> line = ("%ag = f32[8]{0} all-gather(%x), replica_groups=mesh['a'=2,'b'=4] {'b'}, "
    ...         "dimensions={0}")
    >>> collectives(line)[0].group_size
    4
  """
  out = []
  for line in hlo_text.splitlines():
    m = _LINE.match(line)
    if m is None:
      continue
    arrays = list(_ARRAY.finditer(m["result"]))
    if m["start"] and m["kind"] in ("all-gather", "collective-permute"):
      arrays = arrays[1:2]  # The asynchronous start's tuple: (operand, result, ...).
    shapes, nbytes = [], 0
    for a in arrays:
      dims = tuple(int(d) for d in a["dims"].split(",") if d)
      shapes.append(dims)
      nbytes += math.prod(dims) * _bits(a["dtype"]) // 8
    rest = m["rest"]
    if g := _GROUPS_IOTA.search(rest):
      group = int(g["dims"].split(",")[-1])
    elif g := _GROUPS_LIST.search(rest):
      group = len([x for x in g["first"].split(",") if x])
    elif g := _GROUPS_MESH.search(rest):
      sizes = dict(re.findall(r"'([^']+)'=(\d+)", g["axes"]))
      group = math.prod(int(sizes[a]) for a in re.findall(r"'([^']+)'", g["along"]))
    else:
      group = 0
    branch = _BRANCH.search(rest)
    out.append(
      Collective(
        m["kind"],
        tuple(shapes),
        nbytes,
        group,
        None if branch is None else int(branch["index"]),
      )
    )
  return out
