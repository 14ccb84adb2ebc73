"""Shared helpers of the learned-model experiments: binomial intervals, verdicts, the cache."""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

__all__ = ["Z", "binomial", "cache_dir", "fingerprint", "train_cached", "verdict_from_interval"]

Z = 3.0  # width of every interval used for a verdict (in standard errors)


def binomial(successes: int, n: int, z: float = Z) -> dict:
    """Fraction ``p = successes / n``, its standard error ``sqrt(p (1 - p) / n)`` and the Wilson
    score interval at ``z`` standard errors (well behaved at ``p = 0`` or ``1``)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    p = successes / n
    se = math.sqrt(p * (1.0 - p) / n)
    den = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4 * n * n)) / den
    return {"fraction": p, "se": se, "lower": max(0.0, centre - half),
            "upper": min(1.0, centre + half), "n": int(n), "successes": int(successes)}


def verdict_from_interval(b: dict, bound: float = 0.5) -> str:
    """``"success"`` when the whole interval lies above ``bound``, ``"failure"`` when it lies
    below, else ``"inconclusive"``."""
    if b["lower"] > bound:
        return "success"
    if b["upper"] < bound:
        return "failure"
    return "inconclusive"


def fingerprint(obj: Any) -> str:
    """Short stable hash of a JSON-serializable description."""
    s = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha1(s.encode()).hexdigest()[:16]


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """The folder holding trained parameters: ``path``, else ``$COMPOSITION_JAX_CACHE``, else
    ``<tmp>/composition_jax_cache``."""
    if path is None:
        path = os.environ.get("COMPOSITION_JAX_CACHE") or (
            Path(tempfile.gettempdir()) / "composition_jax_cache")
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    return p


def train_cached(trainer: Any, key: jax.Array, data: Any, steps: int, tag: str,
                 description: dict, cache: Path | None) -> tuple[Any, dict]:
    """Train ``steps`` DSM steps from ``trainer.init(key)``, or restore the identical run from the
    cache (the file name is a fingerprint of ``description`` and the trainer configuration).

    Returns ``(state, info)`` with ``info = {"train_seconds", "cached", "final_loss",
    "examples_per_s", "checkpoint"}`` (``train_seconds`` is the original training time).
    """
    fp = fingerprint({"desc": description, "trainer": trainer.config(), "steps": steps,
                      "jax": jax.__version__})
    path = meta = None
    if cache is not None:
        path = Path(cache) / f"{tag}-{fp}.ckpt"
        meta = Path(cache) / f"{tag}-{fp}.json"
        if path.exists() and meta.exists():
            try:
                state = trainer.restore(str(path))
                info = json.loads(meta.read_text())
                if int(state.step) == steps:
                    info["cached"] = True
                    return state, info
            except Exception:  # noqa: BLE001 - a bad cache entry is retrained and overwritten
                pass
    t0 = time.perf_counter()
    state, losses = trainer.train(trainer.init(key), data, steps, progress=False)
    jax.block_until_ready(state.params)
    secs = time.perf_counter() - t0
    tail = losses[-max(1, min(len(losses), 100)):]
    info = {"train_seconds": round(secs, 2), "cached": False,
            "final_loss": float(np.mean(tail)) if len(tail) else float("nan"),
            "examples_per_s": steps * trainer.batch_size / secs if secs > 0 else float("nan"),
            "steps": int(steps), "batch_size": int(trainer.batch_size)}
    if path is not None:
        trainer.save(str(path), state)
        part = meta.with_suffix(".json.part")
        part.write_text(json.dumps(info))
        os.replace(part, meta)
        info["checkpoint"] = str(path)
    return state, info
