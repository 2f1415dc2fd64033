"""Run a generator in a background thread a few items ahead (decoding overlaps generation)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")


def background(gen: Iterator[T], size: int = 2, name: str = "prefetch") -> Iterator[T]:
    """Items of ``gen``, produced by a daemon thread at most ``size`` ahead; an exception in ``gen`` is raised
    here, and closing this iterator stops the thread."""
    q: queue.Queue = queue.Queue(maxsize=size)
    done = object()
    stop = threading.Event()

    def work() -> None:
        try:
            for item in gen:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            q.put(e)

    t = threading.Thread(target=work, daemon=True, name=name)
    t.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
