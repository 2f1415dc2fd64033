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

``CompileClock`` measures, around any stretch of work, the seconds spent tracing, lowering and compiling
(cache lookups included) and the cache's hits and misses, from JAX's own monitoring events; the stages log
it next to their model-loading time and write both to their results.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path
from typing import Any

import jax
from jax import monitoring
from jax.experimental.compilation_cache import compilation_cache as jax_cache

from distil_whisper_jax.infra import files, storage
from distil_whisper_jax.infra.config import flag

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
