"""A warm start for every command: JAX's persistent compilation cache, on by default.

XLA compiles each program (a decoding loop, a train step) the first time a run needs it, which on a CPU
takes as long as transcribing a minute of audio and on a TPU pod can take minutes. With the cache on, the
compiled programs are kept on disk and the next run with the same shapes, model size and devices loads
them instead (JAX keys each entry by the program, the compile options, the devices and the jax/XLA
versions, so a stale entry is never used for a different program).

Where: ``--compilation_cache_dir``, else ``$JAX_COMPILATION_CACHE_DIR`` (JAX's own variable, so a cache a
user already set up is shared), else ``xla`` in the user cache (``~/.cache/distil_whisper_jax/xla``, under
``$XDG_CACHE_HOME`` when set).
``--no-compilation_cache`` turns it off. JAX writes entries from process 0 only, so on a pod the other hosts
start warm only from a cache they share with it: a bucket URL (``gs://...``) all hosts read. A directory that
cannot be written warns once and the run goes on without the cache. The directory is trusted code: JAX runs
what it loads from there, so never point it at a place others can write to.

XLA's cache saves the compiling, not the tracing: before JAX can look a program up it traces the Python (the Flax
model layer by layer, each stage of the decoding loop) and lowers it, ~1-2 s per program for whisper-base on a CPU,
which a short run pays for every batch shape. ``saved_program`` keeps the traced program too (``jax.export``, in
``exported/`` beside XLA's entries), so a warm run reads it back in a fraction of that and goes straight to the
cache lookup. Its key is the program's name and static settings, the argument shapes, the devices, JAX's tracing
settings (x64, matmul precision), the jax version and this package's source code, so an edited package never runs a
stale program.

``CompileClock`` measures, around any stretch of work, the seconds spent tracing, lowering and compiling
(cache lookups included) and the cache's hits and misses, from JAX's own monitoring events; the stages log
it next to their model-loading time and write both to their results.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import warnings
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax import monitoring
from jax.experimental.compilation_cache import compilation_cache as jax_cache

from distil_whisper_jax.infra import files, storage
from distil_whisper_jax.infra.config import flag

log = logging.getLogger(__name__)
PACKAGE_DIR = Path(__file__).resolve().parents[1]

RUNTIME = "runtime"
# programs that compile faster than this are not worth a disk round trip (JAX's default is 1 s)
MIN_COMPILE_SECONDS = 0.5

# JAX's monitoring events: the compile pipeline's durations (one backend compile per program, the cache lookup and,
# on a hit, the load included), a program loaded from the cache, a program written to it (JAX records its "miss"
# only when it stores one: on process 0, for programs slower to compile than the threshold)
_BACKEND = "/jax/core/compile/backend_compile_duration"
_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    _BACKEND,
)
_HIT, _STORED = "/jax/compilation_cache/cache_hits", "/jax/compilation_cache/cache_misses"


@dataclasses.dataclass(frozen=True, kw_only=True)
class CompileCacheFlags:
    """Where compiled programs are kept between runs (every command that compiles)."""

    compilation_cache: bool = flag(
        True,
        "keep compiled XLA programs on disk so the next run with the same shapes skips compiling "
        "(--no-compilation_cache: compile every run)",
        group=RUNTIME,
    )
    compilation_cache_dir: str | None = flag(
        None,
        "where --compilation_cache keeps programs: a directory, or a bucket URL all hosts of a pod share (JAX "
        "writes from process 0 only); default $JAX_COMPILATION_CACHE_DIR, else ~/.cache/distil_whisper_jax/xla "
        "(under $XDG_CACHE_HOME when set)",
        group=RUNTIME,
    )


FIELDS = tuple(f.name for f in dataclasses.fields(CompileCacheFlags))  # how a run runs, never what it computes


def default_dir() -> Path:
    """The cache directory when ``--compilation_cache_dir`` is not given (see the module docstring)."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return Path(os.environ["JAX_COMPILATION_CACHE_DIR"]).expanduser()
    return storage.user_cache_dir() / "xla"


def enable(flags: CompileCacheFlags) -> str | None:
    """Point JAX's persistent cache at the configured directory (or turn it off); returns the directory in use,
    ``None`` when off. Call it before the first compilation of a run; calling it again with the same settings
    keeps the cache JAX already opened."""
    wanted = _usable_dir(flags)
    if jax.config.jax_compilation_cache_dir != wanted or jax.config.jax_enable_compilation_cache != bool(wanted):
        jax.config.update("jax_enable_compilation_cache", wanted is not None)
        jax.config.update("jax_compilation_cache_dir", wanted)
        jax_cache.reset_cache()  # JAX opens its cache once per process; reopen it at the new place
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    return wanted


def _usable_dir(flags: CompileCacheFlags) -> str | None:
    """The cache directory (a local one created), ``None`` with a warning when it cannot be written."""
    if not flags.compilation_cache:
        return None
    given = flags.compilation_cache_dir
    remote = given is not None and storage.is_url(given)
    directory = given if remote else Path(given).expanduser() if given else default_dir()
    try:
        if not remote:
            directory.mkdir(parents=True, exist_ok=True)
        files.check_writable(directory, "--compilation_cache_dir")
    except (OSError, ValueError) as e:
        cause = e if isinstance(e, ValueError) else f"--compilation_cache_dir {directory}: {files.os_error_cause(e)}"
        warnings.warn(f"{cause}; running without the compilation cache (every program compiles)", stacklevel=3)
        return None
    return str(directory)


@functools.cache
def package_fingerprint() -> str:
    """A digest of this package's Python sources: a saved program is only reused by the code that traced it."""
    h = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        h.update(str(path.relative_to(PACKAGE_DIR)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _program_key(name: str, static: Hashable, args: tuple) -> str:
    leaves, tree = jax.tree_util.tree_flatten(args)
    shapes = [(tuple(getattr(x, "shape", ())), str(getattr(x, "dtype", type(x).__name__))) for x in leaves]
    device = jax.local_devices()[0]
    # the settings JAX reads while tracing (a program traced under other ones would ignore them)
    tracing = (jax.config.jax_enable_x64, jax.config.jax_default_matmul_precision)
    parts = (name, repr(static), str(tree), shapes, tracing, jax.__version__, device.platform, device.device_kind)
    return hashlib.sha256(repr((parts, package_fingerprint())).encode()).hexdigest()[:32]


_SAVED: dict[str, Callable] = {}  # this process's programs read or traced so far, by key
_SAVED_MAX = 32


def saved_program(fn: Callable, name: str, static: Hashable, args: tuple) -> Callable:
    """``fn`` (a ``jax.jit`` function of one device's arrays) for ``args``, traced once per machine instead of once
    per process: the traced program is saved in the compilation cache directory and a later run reads it back
    (see the module docstring). ``static`` holds everything else the program depends on (its config, options and
    dtype). With the compilation cache off, or on a bucket URL, ``fn`` itself."""
    directory = jax.config.jax_compilation_cache_dir
    if not jax.config.jax_enable_compilation_cache or not directory or storage.is_url(directory):
        return fn
    key = _program_key(name, static, args)
    if key in _SAVED:
        return _SAVED[key]
    path = Path(directory) / "exported" / f"{name}-{key}.jaxexp"
    exported = None
    if path.is_file():
        try:
            exported = jax.export.deserialize(bytearray(path.read_bytes()))
        except Exception as e:  # a damaged or foreign file: trace again and replace it
            log.warning("%s: unreadable saved program (%s); tracing it again", path, e)
    if exported is None:
        specs = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), args)
        exported = jax.export.export(fn)(*specs)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with files.atomic_write(path, "wb") as f:
                f.write(exported.serialize())
        except OSError as e:
            log.warning("%s: cannot save the traced program (%s); the next run traces it again", path, e)
    if len(_SAVED) >= _SAVED_MAX:
        _SAVED.pop(next(iter(_SAVED)))  # the oldest
    _SAVED[key] = jax.jit(exported.call)
    return _SAVED[key]


class CompileClock:
    """Seconds spent compiling (tracing, lowering, XLA or the cache's load), the programs built, how many of them
    came from the persistent cache and how many were written to it, while the ``with`` block runs; counted from
    JAX's monitoring events of every thread."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.programs = 0
        self.hits = 0
        self.stored = 0

    @property
    def compiled(self) -> int:
        """Programs XLA compiled (not loaded from the cache)."""
        return self.programs - self.hits

    def _on_duration(self, event: str, duration_secs: float, **_: Any) -> None:
        if event in _COMPILE_EVENTS:
            self.seconds += duration_secs
        if event == _BACKEND:
            self.programs += 1

    def _on_event(self, event: str, **_: Any) -> None:
        if event == _HIT:
            self.hits += 1
        elif event == _STORED:
            self.stored += 1

    def __enter__(self) -> CompileClock:
        monitoring.register_event_duration_secs_listener(self._on_duration)
        monitoring.register_event_listener(self._on_event)
        return self

    def __exit__(self, *exc: object) -> None:
        monitoring.unregister_event_duration_listener(self._on_duration)
        monitoring.unregister_event_listener(self._on_event)

    def as_dict(self) -> dict[str, float | int]:
        """For a run's results: ``compile_seconds`` and the programs ``compiled``, ``loaded`` from the cache and
        ``stored`` in it."""
        return {
            "compile_seconds": round(self.seconds, 2),
            "programs_compiled": self.compiled,
            "programs_loaded": self.hits,
            "programs_stored": self.stored,
        }

    def summary(self) -> str:
        """One log line's worth: ``compiling 12.3 s (5 programs compiled, 1 of them stored; 4 loaded from the
        cache)``."""
        return (
            f"compiling {self.seconds:.1f} s ({self.compiled} programs compiled, {self.stored} of them stored; "
            f"{self.hits} loaded from the cache)"
        )
