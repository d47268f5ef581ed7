"""Names for the pytrees of the public API, in the spirit of optax's ``optax.Params``.

Pytrees have no precise static type; these aliases say in a signature which tree is
meant (the params, an optimizer state, a tree of partition specs) where ``Any`` would
say nothing.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import optax

__all__ = ["IdTree", "OptState", "Params", "ShardingTree", "SpecTree", "Updates"]

# A pytree of arrays: the params (or a tree with the params' structure).
Params: TypeAlias = optax.Params
# A pytree of arrays with the params' structure: gradients or updates.
Updates: TypeAlias = optax.Updates
# An optimizer state: any pytree an optax init returns (chains, partitions, ...).
OptState: TypeAlias = optax.OptState
# A pytree of jax.sharding.PartitionSpec (or None), the params' structure or a prefix.
SpecTree: TypeAlias = Any
# A pytree of jax.sharding.Sharding, the params' (or a state's) structure.
ShardingTree: TypeAlias = Any
# A pytree of integer id arrays, one per table (a prefix of the params' structure).
IdTree: TypeAlias = Any
