"""Data parallelism over local devices (pmap semantics with jit + shardings), and multi-host helpers.

Batches are split along axis 0 over every local device; parameters are replicated once. This is
``pmap``'s contract (per-device batches, identical replicas) expressed with ``jax.jit`` and a 1-D
``Mesh``, which is what JAX recommends now that ``pmap`` is in maintenance mode.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from distil_whisper_jax.core.model import ATTENTION_QUERY_CHUNK

DATA_AXIS = "data"


def data_mesh(devices: list | None = None) -> Mesh:
    """A 1-D data-parallel mesh over ``devices``: by default every device of every process (training);
    pass ``jax.local_devices()`` (or a subset) for work each process does on its own (inference)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def attention_query_chunk(platform: str | None = None) -> int | None:
    """The model's ``attention_query_chunk`` for programs that run on ``platform`` (default: JAX's
    default backend): tiled attention on CPU, where it keeps score blocks in cache; none on TPU/GPU,
    whose compilers fuse the full-matrix form."""
    platform = jax.default_backend() if platform is None else platform
    return ATTENTION_QUERY_CHUNK if platform == "cpu" else None


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Put a copy of ``tree`` on every device of ``mesh`` (do this once, not per batch)."""
    return jax.device_put(tree, replicated(mesh))


def map_rows(fn, x: Any, shards: int = 1) -> Any:
    """``fn`` over batch ``x`` (a pytree with a common leading axis B), ``shards`` rows at a time: with the
    batch split over ``shards`` devices, each step is one row per device. The outputs are stacked back to
    B rows, in order. For CPU: one example's activations stay in cache between ops, which makes the
    Whisper encoder faster than one batched pass (docs/benchmarks.md); a loop is no gain on TPU/GPU, so
    elsewhere (or with at most ``shards`` rows) ``fn`` simply runs on the whole batch."""
    b = jax.tree_util.tree_leaves(x)[0].shape[0]
    if jax.default_backend() != "cpu" or b <= shards or b % shards:
        return fn(x)
    steps = b // shards
    # device-major split: device d holds rows [d·steps, (d+1)·steps), so step i takes row i of every device
    split = lambda a: jnp.swapaxes(a.reshape((shards, steps) + a.shape[1:]), 0, 1)
    merge = lambda a: jnp.swapaxes(a, 0, 1).reshape((b,) + a.shape[2:])
    out = jax.lax.map(fn, jax.tree_util.tree_map(split, x))
    return jax.tree_util.tree_map(merge, out)


def pad_batch(x: np.ndarray, multiple: int) -> tuple[np.ndarray, int]:
    """Zero-pad axis 0 up to a multiple of ``multiple``; returns the padded array and the true size."""
    n = x.shape[0]
    pad = (-n) % multiple
    if pad:
        x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
    return x, n


def shard_batch(x: np.ndarray, mesh: Mesh) -> jax.Array:
    """Split ``x`` along axis 0 over the mesh's devices (its size must divide evenly)."""
    if x.shape[0] % mesh.size:
        raise ValueError(f"batch of {x.shape[0]} is not divisible by {mesh.size} devices; pad it first")
    return jax.device_put(x, batch_sharded(mesh))


def replicate_global(tree: Any, mesh: Mesh) -> Any:
    """Host (numpy) values → arrays replicated on every device of a mesh that may span several processes
    (each process passes the same values; ``device_put`` alone cannot address other hosts' devices)."""
    sharding = replicated(mesh)

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree_util.tree_map(put, tree)
