"""Counting the programs JAX builds (for tests that check eager calls compile one program)."""

from __future__ import annotations

import jax


def programs_built(fn, *args):
    """``(fn(*args), number of programs JAX lowered while running it)`` (a lowering happens for
    every program not already in this process's memory, whatever the persistent cache holds)."""
    built = []

    def listen(event, _secs, **_kw):
        if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
            built.append(event)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        out = jax.block_until_ready(fn(*args))
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    return out, len(built)
