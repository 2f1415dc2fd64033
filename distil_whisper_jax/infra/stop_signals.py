"""How a training run learns that it must stop early: SIGTERM (the notice a preempted TPU VM gets) and SIGINT
(Ctrl-C). The run finishes its step, checkpoints it and exits.

One process notes the signal in a Python handler. Several processes (a pod) leave SIGTERM to JAX's preemption
service, which ``jax.distributed.initialize`` starts: it catches the signal on whichever hosts get it and agrees
with every host on one step to stop after, so no process stops alone and leaves the others waiting in a
collective. A Python SIGTERM handler would replace the service's own; Ctrl-C is passed on to it as a SIGTERM.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import jax
from jax.experimental import multihost_utils


def install(note: Callable[[int], None]) -> dict:
    """Route the stop signals (``note(signum)`` with one process); returns the handlers replaced."""

    def handler(signum, frame):
        note(signum)

    def to_service(signum, frame):
        os.kill(os.getpid(), signal.SIGTERM)

    if jax.process_count() == 1:
        return {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    return {signal.SIGINT: signal.signal(signal.SIGINT, to_service)}


def restore(handlers: dict) -> None:
    """Put back what :func:`install` replaced."""
    for signum, handler in handlers.items():
        signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def preempted(step: int) -> bool:
    """With several processes: True on every process at the same step once any host got SIGTERM. Ask after
    every step (and once before the first, so a notice that came during set-up is seen); always False for one
    process, which notes the signal through :func:`install`."""
    return jax.process_count() > 1 and multihost_utils.reached_preemption_sync_point(step)
