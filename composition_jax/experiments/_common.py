"""Shared helpers of the learned-model experiments: binomial intervals, verdicts, the cache.

The parameter cache is a per-user folder (:func:`cache_dir`): ``$COMPOSITION_JAX_CACHE``, else
``$XDG_CACHE_HOME/composition_jax``, else ``~/.cache/composition_jax``, created with mode
``0o700``. :func:`train_cached` reads and writes it only when it is a directory owned by the
current user that neither group nor others can write (:func:`untrusted_reason`); otherwise it
warns and retrains without caching. Checkpoints carry a SHA-256 over header and payload and the
trainer's configuration, which detect damage and mix-ups but not a deliberately forged file, hence
the ownership rule.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import time
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np

__all__ = ["Z", "binomial", "cache_dir", "default_cache_dir", "fingerprint", "train_cached",
           "untrusted_reason", "verdict_from_interval"]

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


def default_cache_dir() -> Path:
    """The per-user parameter cache: ``$COMPOSITION_JAX_CACHE`` if set, else
    ``$XDG_CACHE_HOME/composition_jax``, else ``~/.cache/composition_jax``."""
    env = os.environ.get("COMPOSITION_JAX_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "composition_jax"


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """The folder holding trained parameters: ``path``, else :func:`default_cache_dir`; created
    (with its parents) if missing, the folder itself with mode ``0o700`` (user only). An existing
    folder is left as it is; :func:`train_cached` refuses it if :func:`untrusted_reason` objects."""
    p = Path(path).expanduser() if path is not None else default_cache_dir()
    if not p.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
        try:
            p.mkdir(mode=0o700)
        except FileExistsError:  # created meanwhile by another process: judged when used
            pass
    return p


def untrusted_reason(path: str | os.PathLike) -> str | None:
    """Why the cache folder ``path`` must not be trusted, or ``None``: it must be a directory
    (symbolic links are followed) owned by the current user, not writable by group or others."""
    try:
        st = os.stat(path)
    except OSError as e:
        return f"cannot stat it ({e.strerror})"
    if not stat.S_ISDIR(st.st_mode):
        return "it is not a directory"
    getuid = getattr(os, "getuid", None)
    if getuid is not None and st.st_uid != getuid():
        return f"it is owned by uid {st.st_uid}, not by the current user (uid {getuid()})"
    writers = [w for w, bit in (("group", stat.S_IWGRP), ("others", stat.S_IWOTH))
               if st.st_mode & bit]
    if writers:
        return (f"it is writable by {' and '.join(writers)} (mode {stat.S_IMODE(st.st_mode):o}); "
                f"chmod 700 it or choose another folder with $COMPOSITION_JAX_CACHE")
    return None


def train_cached(trainer: Any, key: jax.Array, data: Any, steps: int, tag: str,
                 description: dict, cache: Path | None) -> tuple[Any, dict]:
    """Train ``steps`` DSM steps from ``trainer.init(key)``, or restore the identical run from the
    cache (the file name is a fingerprint of ``description`` and the trainer configuration).

    A cache folder that :func:`untrusted_reason` objects to is neither read nor written (a
    ``UserWarning`` says why); a cache entry that fails to load (corrupt, other configuration,
    other step count) is retrained and overwritten, with a ``UserWarning``.

    Returns ``(state, info)`` with ``info = {"train_seconds", "cached", "final_loss",
    "examples_per_s", "checkpoint"}`` (``train_seconds`` is the original training time).
    """
    fp = fingerprint({"desc": description, "trainer": trainer.config(), "steps": steps,
                      "jax": jax.__version__})
    path = meta = None
    if cache is not None:
        why = untrusted_reason(cache)
        if why is not None:
            warnings.warn(f"ignoring the parameter cache {cache}: {why}; training {tag} without "
                          f"caching", UserWarning, stacklevel=2)
            cache = None
    if cache is not None:
        path = Path(cache) / f"{tag}-{fp}.ckpt"
        meta = Path(cache) / f"{tag}-{fp}.json"
        if path.exists() and meta.exists():
            try:
                state = trainer.restore(str(path))
                info = json.loads(meta.read_text())
                if int(state.step) != steps:
                    raise ValueError(f"it holds step {int(state.step)}, not {steps}")
                info["cached"] = True
                return state, info
            except (ValueError, TypeError, OSError) as e:  # CheckpointError, JSON errors: ValueError
                warnings.warn(f"retraining {tag}: cache entry {path} not used ({e})",
                              UserWarning, stacklevel=2)
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
