"""JAX's persistent compilation cache for the command line and the test suite.

XLA compilation dominates a ``reproduce`` run that has already run once (the learned stage:
62 of 93 s with the parameters cached, measured 2026-12-01), so ``composition-jax reproduce``
keeps compiled programs in a per-user folder, ``<parameter cache>/xla`` (see
:func:`composition_jax.experiments._common.cache_dir`), unless ``--no-compile-cache`` is given,
``COMPOSITION_JAX_COMPILE_CACHE=off`` is set, or JAX's own setting (``JAX_COMPILATION_CACHE_DIR``)
names a folder, which is then used as it is.

A compiled program is machine code that the process runs, so the folder is used only when it and
the parameter cache around it pass the parameter cache's ownership rule
(:func:`~composition_jax.experiments._common.untrusted_reason`: a directory owned by the current
user that neither group nor others can write); otherwise a ``UserWarning`` says why and the run
compiles without it.

JAX writes an entry in place, not atomically: a process killed while writing leaves a truncated
entry that JAX would warn about on every later read and never rewrite. Each process that uses a
folder marks it while it runs (:func:`open_session`); the next one finds the mark of a process
that is gone and then reads every entry, deleting those that do not decompress
(:func:`sweep`). The size cap drops the oldest entries first.
"""

from __future__ import annotations

import atexit
import os
import warnings
from pathlib import Path

__all__ = ["CACHE_MAX_BYTES", "close_session", "enable_for_cli", "open_session", "sweep"]

CACHE_MAX_BYTES = 2 << 30  # a full test run writes ~40 MB; past this, the oldest entries go

_OFF = ("off", "0", "no", "false")
_OPEN_MARK = ".session-open-"  # + pid: a process using the cache is running (or was cut)


def sweep(path: str | os.PathLike, max_bytes: int = CACHE_MAX_BYTES, *,
          verify: bool = True) -> int:
    """Delete entries that do not decompress (a write cut short; only with ``verify``, which
    reads every entry), then the oldest entries while the folder holds more than ``max_bytes``;
    returns how many were deleted."""
    try:
        from jax._src.compilation_cache import decompress_executable
    except ImportError:  # another jax layout: leave the cache to jax
        return 0
    kept, dropped = [], 0
    for entry in Path(path).glob("*-cache"):
        try:
            if verify:
                decompress_executable(entry.read_bytes())
            st = entry.stat()
            kept.append((st.st_mtime, st.st_size, entry))
        except FileNotFoundError:  # removed by a concurrent process
            continue
        except Exception:  # noqa: BLE001 (zlib or zstd error): truncated or garbled
            entry.unlink(missing_ok=True)
            dropped += 1
    total = sum(size for _, size, _ in kept)
    for _, size, entry in sorted(kept, key=lambda e: e[0]):
        if total <= max_bytes:
            break
        entry.unlink(missing_ok=True)
        total -= size
        dropped += 1
    return dropped


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def open_session(path: str | os.PathLike, max_bytes: int = CACHE_MAX_BYTES) -> int:
    """Mark this process as using the cache at ``path``; read and check every entry only when a
    process before it was cut short (its mark is left and it is gone), else apply only the size
    cap. Returns how many entries were deleted."""
    folder = Path(path)
    stale = []
    for m in folder.glob(_OPEN_MARK + "*"):
        try:
            pid = int(m.name[len(_OPEN_MARK):])
        except ValueError:
            pid = 0
        if pid <= 0 or not _pid_alive(pid):
            stale.append(m)
    dropped = sweep(folder, max_bytes, verify=bool(stale))
    for m in stale:
        m.unlink(missing_ok=True)
    (folder / f"{_OPEN_MARK}{os.getpid()}").touch()
    return dropped


def close_session(path: str | os.PathLike) -> None:
    """Remove this process's mark (a clean end: the next process need not check every entry).
    The mark stays while work started by :func:`composition_jax._threads.beside` still runs
    (the process is ending on an interrupt: such a thread may be cut in the middle of a write)."""
    from ._threads import running

    if running():
        return
    (Path(path) / f"{_OPEN_MARK}{os.getpid()}").unlink(missing_ok=True)


def enable_for_cli(enabled: bool = True, cache: str | os.PathLike | None = None
                   ) -> tuple[str | None, str]:
    """Switch JAX's persistent compilation cache on for this process, before its first
    compilation. Returns ``(folder or None, how)``, ``how`` one line for the report.

    * JAX already has a folder (``JAX_COMPILATION_CACHE_DIR`` or ``jax.config``): used as it is,
      with JAX's own thresholds.
    * ``enabled=False`` (``--no-compile-cache``), or the environment variable
      ``COMPOSITION_JAX_COMPILE_CACHE`` is ``off`` (or ``0``, ``no``, ``false``): off.
    * else ``<cache>/xla`` (``cache``: the parameter cache folder, default
      :func:`~composition_jax.experiments._common.default_cache_dir`), every compilation cached
      (minimum compile time 0); off with a ``UserWarning`` when the folder or the parameter
      cache folder fails the ownership rule.
    """
    import jax

    from .experiments._common import cache_dir, untrusted_reason

    configured = jax.config.jax_compilation_cache_dir
    if configured:
        return str(configured), f"on ({configured}, set by JAX's own configuration)"
    if not enabled:
        return None, "off (--no-compile-cache)"
    if os.environ.get("COMPOSITION_JAX_COMPILE_CACHE", "").strip().lower() in _OFF:
        return None, "off (COMPOSITION_JAX_COMPILE_CACHE)"
    root = cache_dir(cache)
    folder = root / "xla"
    why = untrusted_reason(root)  # judged before anything is created in it
    if why is None:
        if not folder.exists():
            try:
                folder.mkdir(mode=0o700)
            except FileExistsError:  # created meanwhile by another process: judged below
                pass
        why = untrusted_reason(folder)
    if why is not None:
        warnings.warn(f"not using the compilation cache {folder}: {why}; compiling without it",
                      UserWarning, stacklevel=2)
        return None, f"off ({folder} ignored: {why})"
    open_session(folder)
    atexit.register(close_session, folder)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return str(folder), f"on ({folder})"
