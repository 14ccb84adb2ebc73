"""Work that runs beside the calling thread (the ``reproduce`` command's second scenario thread
and its learned experiments).

Each piece of work runs in a *daemon* thread, so an interrupt of the main thread (Ctrl-C,
SIGTERM) ends the process without waiting for it; :func:`running` tells whether any is still
alive (the compilation cache then leaves its folder marked, since a write may be cut short).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

__all__ = ["PREFIX", "beside", "running"]

PREFIX = "composition_jax-"


def beside(fn: Callable[[], Any], name: str) -> Callable[[], Any]:
    """Start ``fn()`` in a daemon thread named ``PREFIX + name``; return ``join`` that waits for
    it and returns its result, or raises in the caller what ``fn`` raised."""
    box: dict = {}

    def work():
        try:
            box["result"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised by join, in the calling thread
            box["error"] = e

    th = threading.Thread(target=work, name=PREFIX + name, daemon=True)
    th.start()

    def join():
        th.join()
        if "error" in box:
            raise box["error"]
        return box["result"]

    return join


def running() -> bool:
    """Whether a thread started by :func:`beside` is still running."""
    return any(t.name.startswith(PREFIX) and t.is_alive() for t in threading.enumerate())
