r"""Checkpoints stored with orbax, with an integrity record and target checks on top.

Layout (format version 3)
-------------------------
A checkpoint *path* is an orbax :class:`orbax.checkpoint.CheckpointManager` directory; each saved
step is a subdirectory holding two items::

    path/<step>/state/   the pytree, saved with ``ocp.args.StandardSave`` as a nested dict of
                         arrays keyed by the tree's key path ({"params": {"params": {"Dense_0":
                         {"kernel": ...}}}, "opt_state": {"0": {"mu": ...}}, "step": ...});
                         typed PRNG keys are stored as their ``jax.random.key_data`` (uint32)
    path/<step>/meta/    a JSON item (``ocp.args.JsonSave``): the integrity record below

so any orbax user reads the arrays back with ``ocp.StandardCheckpointer().restore(path/<step>/
"state")``. The parameters of a flax NNX network are its ``nnx.State``, stored under the same
key paths (``params/proj_in/kernel/value``; list indices as ``"0"``, ``"1"``, ...). The record holds ``format_version``, ``step``, the *fingerprint* of the tree (for every
leaf: its key path such as ``params/Dense_0/kernel``, its shape and dtype), the PRNG key
implementations (``key_impls``), free-form JSON ``metadata`` (:class:`~.trainer.DSMTrainer` stores
its configuration there), ``arrays_sha256`` and ``sha256``:

* ``arrays_sha256`` is the SHA-256 over every leaf in fingerprint order (its key path, dtype,
  shape and little-endian bytes), computed from the host arrays before orbax writes them and
  recomputed from the arrays orbax returns, so it is independent of orbax's on-disk layout (OCDBT,
  zarr chunks, compression) and of any future change to it;
* ``sha256`` is the SHA-256 of the canonical JSON (sorted keys) of every other field of the
  record, ``arrays_sha256`` included: one digest covers the metadata and, through it, the arrays.

What orbax brings, and what of it is exercised here: atomic step directories (written under a
temporary name, renamed when complete), asynchronous writes (:class:`CheckpointWriter`, which
the trainer's periodic checkpoints use; :func:`save_checkpoint` is its synchronous form),
sharded arrays (a target whose leaves carry a ``sharding`` restores with it) and multi-host
writing. The tests run orbax in a single process with every array on one CPU device (a sharded
target is tested on a one-device mesh only). The integrity record needs every array fully
addressable by the saving process, so multi-host saving (orbax's reason for per-process files)
would need a per-shard record, which is not implemented.

Loading
-------
:func:`load_checkpoint` checks, in order, and raises :class:`CheckpointError` (a ``ValueError``)
naming the first problem; no orbax, tensorstore, ``KeyError`` or JSON error escapes:

1. the path holds checkpoints, and the requested step (by default the latest) exists;
2. the JSON record parses, has the expected fields, its ``format_version`` is this one (a newer
   one is refused with a message saying so), and its ``sha256`` matches, so an edited metadata
   value, step or fingerprint is refused;
3. the caller's metadata check (``check_metadata``; the trainer compares its configuration);
4. every leaf of the target against the fingerprint, in the target's flattening order: a leaf
   missing from the checkpoint, then its shape, then its dtype, then leaves in the checkpoint that
   the target does not have (so restoring into another tree structure is refused by name);
5. orbax reads the arrays (any failure, e.g. a truncated or garbled file, is reported as
   corruption), whose shapes and dtypes must match the fingerprint and whose bytes must match
   ``arrays_sha256``.

The digests detect corruption and mix-ups, not forgery: anyone who can write the files can
recompute them. Keep checkpoints in folders only you can write (the experiments' parameter cache
refuses others, see :func:`composition_jax.experiments._common.cache_dir`).

Files of the previous format
----------------------------
Format 2 was a single file ``b"CJAXCKPT" | uint64 header length | header (JSON) | payload (flax
msgpack) | SHA-256 of everything before it``. It is still *read* (never written): a path that is a
file goes to that reader, which keeps its checks (whole-file digest, header fields, fingerprint,
decoded payload), so models already in a parameter cache keep loading instead of being
retrained; the reader is small and its checks are the strongest of the three formats (one digest
over every byte). :func:`save_checkpoint` onto such a file replaces it by a checkpoint directory.
Format 1 (header outside the hash) is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "CheckpointWriter",
    "checkpoint_steps",
    "load_checkpoint",
    "read_checkpoint_header",
    "save_checkpoint",
    "tree_fingerprint",
]

FORMAT_VERSION = 3
LEGACY_FORMAT_VERSION = 2  # single-file format, read only
MAGIC = b"CJAXCKPT"
_DIGEST_BYTES = 32  # SHA-256
_PREFIX = len(MAGIC) + 8  # magic + uint64 header length
_ITEMS = ("state", "meta")
_RECORD_FIELDS = ("format_version", "step", "fingerprint", "key_impls", "metadata",
                  "arrays_sha256", "sha256")


class CheckpointError(ValueError):
    """A checkpoint is corrupt, of an unsupported version, or does not match the target."""


def _ocp():
    """orbax.checkpoint, imported on first use (it adds about a second to the import)."""
    try:
        import orbax.checkpoint as ocp
    except ImportError as e:  # pragma: no cover - orbax-checkpoint is a dependency
        raise ImportError(
            "training checkpoints need orbax-checkpoint: pip install 'orbax-checkpoint>=0.12.8'"
        ) from e
    return ocp


def _is_key(leaf: Any) -> bool:
    dt = getattr(leaf, "dtype", None)
    return dt is not None and jax.dtypes.issubdtype(dt, jax.dtypes.prng_key)


def _key_entry(k: Any) -> str:
    tu = jax.tree_util
    if isinstance(k, tu.DictKey):
        return str(k.key)
    if isinstance(k, tu.GetAttrKey):
        return k.name
    if isinstance(k, tu.SequenceKey):
        return str(k.idx)
    if isinstance(k, tu.FlattenedIndexKey):
        return str(k.key)
    return str(k)  # pragma: no cover - custom key types


def _path_str(path: tuple) -> str:
    return "/".join(_key_entry(k) for k in path)


def _show(p: str) -> str:
    return p if p else "<root>"


def tree_fingerprint(tree: Any) -> list[list[Any]]:
    """``[[key_path, shape, dtype], ...]`` for every leaf of ``tree`` (arrays or
    ``jax.ShapeDtypeStruct``), in flattening order; key paths are ``/``-joined
    (``"params/Dense_0/kernel"``).

    Raises:
      ValueError: two leaves with the same key path (e.g. a dict key containing ``/``).
    """
    out, seen = [], set()
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        shape = list(leaf.shape) if hasattr(leaf, "shape") else list(np.shape(leaf))
        dtype = str(leaf.dtype) if hasattr(leaf, "dtype") else str(np.asarray(leaf).dtype)
        p = _path_str(path)
        if p in seen:
            raise ValueError(f"two leaves share the key path {p!r}; checkpoints need unique paths")
        seen.add(p)
        out.append([p, shape, dtype])
    return out


# -- the integrity record -----------------------------------------------------------------------
def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=True).encode("ascii")


def _record_digest(record: dict) -> str:
    return hashlib.sha256(_canonical({k: v for k, v in record.items() if k != "sha256"}))\
        .hexdigest()


def _arrays_digest(named: list[tuple[str, np.ndarray]]) -> str:
    """SHA-256 over ``(key path, dtype, shape, little-endian bytes)`` of every array, in order."""
    h = hashlib.sha256()
    for p, a in named:
        a = np.ascontiguousarray(a)
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        head = _canonical([p, a.dtype.str.lstrip("<>|="), list(a.shape)])
        h.update(struct.pack("<Q", len(head)) + head)
        h.update(struct.pack("<Q", a.nbytes))
        h.update(a.tobytes())
    return h.hexdigest()


def _check_record_fields(record: Any) -> str | None:
    """Why ``record`` (a parsed JSON item of the current version) is malformed, or ``None``."""
    if not isinstance(record, dict):
        return "not a JSON object"
    missing = [k for k in _RECORD_FIELDS if k not in record]
    if missing:
        return f"no {missing[0]!r}"
    step = record["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        return "step is not a non-negative integer"
    fp = record["fingerprint"]
    if not isinstance(fp, list):
        return "fingerprint is not a list"
    for e in fp:
        if not (isinstance(e, list) and len(e) == 3 and isinstance(e[0], str)
                and isinstance(e[1], list)
                and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in e[1])
                and isinstance(e[2], str)):
            return f"bad fingerprint entry {e!r}"
    if len({e[0] for e in fp}) != len(fp):
        return "duplicate key paths in the fingerprint"
    ki = record["key_impls"]
    if not isinstance(ki, dict) or not all(isinstance(v, str) for v in ki.values()):
        return "key_impls is not a mapping of key paths to names"
    if not isinstance(record["metadata"], dict):
        return "metadata is not a JSON object"
    for k in ("arrays_sha256", "sha256"):
        if not isinstance(record[k], str):
            return f"{k} is not a string"
    return None


def _nest(named: list[tuple[tuple[str, ...], Any]]) -> dict:
    """Nested dict ``{component: {...: leaf}}`` from ``(key path components, leaf)`` pairs."""
    root: dict = {}
    for parts, leaf in named:
        node = root
        for c in parts[:-1]:
            node = node.setdefault(c, {})
        node[parts[-1]] = leaf
    return root


def _leaf_parts(tree: Any) -> list[tuple[tuple[str, ...], Any]]:
    pairs = jax.tree_util.tree_flatten_with_path(tree)[0]
    if not pairs:
        raise ValueError("tree has no array leaves: nothing to checkpoint")
    if len(pairs) == 1 and pairs[0][0] == ():
        raise ValueError("tree must be a container of arrays (dict, dataclass, tuple, ...), "
                         "got a single array")
    return [(tuple(_key_entry(k) for k in path), leaf) for path, leaf in pairs]


# -- directory helpers -------------------------------------------------------------------------
def _is_legacy_file(path: Path) -> bool:
    return path.is_file()


def _reader(path: Path):
    """A CheckpointManager on ``path`` that creates nothing (orbax's ``read_only`` mode would log
    a warning on every open)."""
    ocp = _ocp()
    options = ocp.CheckpointManagerOptions(create=False, enable_async_checkpointing=False)
    return ocp.CheckpointManager(path, options=options, item_names=_ITEMS)


def _steps(m, path: Path) -> list[int]:
    try:
        return sorted(int(s) for s in m.all_steps())
    except Exception as e:  # noqa: BLE001 - an unreadable directory
        raise CheckpointError(f"{path} is not a readable checkpoint directory ({_brief(e)})") \
            from None


def _open_for_reading(path: Path):
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    if not path.is_dir():  # pragma: no cover - files go to the single-file reader
        raise CheckpointError(f"{path} is not a checkpoint directory")
    try:
        return _reader(path)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{path} is not a readable checkpoint directory ({_brief(e)})") \
            from None


def checkpoint_steps(path: str | os.PathLike) -> list[int]:
    """The steps saved under ``path`` (ascending); ``[]`` when there are none. A single-file
    checkpoint of the previous format counts as one step (its metadata ``step``, else 0)."""
    p = Path(path)
    if _is_legacy_file(p):
        meta = _read_legacy(p)[0]["metadata"]
        s = meta.get("step", 0)
        return [s if isinstance(s, int) and not isinstance(s, bool) else 0]
    if not p.is_dir():
        return []
    with _open_for_reading(p) as m:
        return _steps(m, p)


def _brief(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0][:300]}" if msg else type(e).__name__


def _pick_step(m, path: Path, step: int | None) -> int:
    steps = _steps(m, path)
    if not steps:
        raise CheckpointError(f"{path} holds no checkpoint (no committed step directory)")
    if step is None:
        return steps[-1]
    if step not in steps:
        raise CheckpointError(f"{path} has no step {step}; saved steps: {steps}")
    return step


# -- save ----------------------------------------------------------------------------------------
def _prepare(tree: Any, metadata: dict | None, step: Any) -> tuple[int, dict, dict]:
    """Validate; return ``(step, nested dict of arrays to save, JSON record)``."""
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    step = int(step)
    fingerprint = tree_fingerprint(tree)
    parts = _leaf_parts(tree)
    key_impls: dict[str, str] = {}
    to_save, hashed = [], []
    for (p, _, _), (comps, leaf) in zip(fingerprint, parts):
        if _is_key(leaf):
            key_impls[p] = str(jax.random.key_impl(leaf))
            leaf = jax.random.key_data(leaf)
        if not isinstance(leaf, jax.Array):
            leaf = np.asarray(leaf)
        host = np.asarray(jax.device_get(leaf))
        if host.dtype.fields is not None or not (host.dtype == np.bool_ or
                                                 jax.dtypes.issubdtype(host.dtype, np.number)):
            raise ValueError(f"leaf {_show(p)}: dtype {host.dtype} is not supported (numeric and "
                             f"boolean arrays only)")
        to_save.append((comps, leaf))
        hashed.append((p, host))
    record = {
        "format_version": FORMAT_VERSION,
        "step": step,
        "fingerprint": fingerprint,
        "key_impls": key_impls,
        "metadata": dict(metadata or {}),
        "arrays_sha256": _arrays_digest(hashed),
    }
    try:  # what JsonSave writes and reads back (field order kept; the digest sorts keys)
        record = json.loads(json.dumps(record, allow_nan=True))
    except (TypeError, ValueError) as e:
        raise ValueError(f"metadata must be JSON-serializable: {e}") from None
    record["sha256"] = _record_digest(record)
    return step, _nest(to_save), record


class CheckpointWriter:
    """Writes the steps of one orbax checkpoint directory through one open
    ``CheckpointManager``, asynchronously by default.

    :meth:`save` returns once the arrays are on the host and the integrity record is computed;
    orbax writes the step in a background thread (committed atomically: written under a
    temporary name, renamed when complete), so training continues meanwhile. :meth:`wait` (or
    leaving the ``with`` block, or :meth:`close`) blocks until every pending step is committed and
    raises a failed write's error. Saving a step that exists replaces it, and a file of the
    previous single-file format at ``path`` is replaced by the directory; what is replaced is
    moved aside first, deleted once the new step is committed, put back if its write fails.

    Args:
      path: the checkpoint directory (created on the first save).
      max_to_keep: keep only the newest ``max_to_keep`` steps (``None``: keep all).
      use_async: write in the background (``False``: :meth:`save` returns when committed).

    Example:
      >>> with CheckpointWriter(path) as w:          # doctest: +SKIP
      ...     for step in range(0, 1000, 100):
      ...         state = train_some_more(state)
      ...         w.save(state, {"note": "..."}, step=step)
    """

    def __init__(self, path: str | os.PathLike, *, max_to_keep: int | None = None,
                 use_async: bool = True):
        if max_to_keep is not None and (isinstance(max_to_keep, bool) or
                                        not isinstance(max_to_keep, int) or max_to_keep < 1):
            raise ValueError(f"max_to_keep must be a positive int or None, got {max_to_keep!r}")
        self.path = Path(path)
        self.max_to_keep = max_to_keep
        self.use_async = bool(use_async)
        self._manager = None
        self._replaced: list[tuple[Path, Path]] = []  # (moved-aside copy, where it belongs)

    def _open(self):
        if self._manager is None:
            ocp = _ocp()
            policy = None if self.max_to_keep is None else \
                ocp.checkpoint_managers.LatestN(self.max_to_keep)
            options = ocp.CheckpointManagerOptions(
                create=True, enable_async_checkpointing=self.use_async,
                preservation_policy=policy)
            self._manager = ocp.CheckpointManager(self.path, options=options, item_names=_ITEMS)
        return self._manager

    def save(self, tree: Any, metadata: dict | None = None, *, step: int) -> None:
        """Start writing ``tree`` (a pytree of arrays, typed PRNG keys allowed) and
        JSON-serializable ``metadata`` as step ``step``.

        Raises:
          ValueError: leaves of object or structured dtype, non-JSON metadata, a bad ``step``
            (refused before anything is written).
          CheckpointError: ``path`` is a file that is not a checkpoint of this library.
        """
        step, nested, record = _prepare(tree, metadata, step)
        path = self.path
        if self._manager is not None and step in self._manager.all_steps():
            self.wait()  # this writer's own write of that step may be in flight
        if _is_legacy_file(path):
            with open(path, "rb") as f:
                if f.read(len(MAGIC)) != MAGIC:
                    raise CheckpointError(f"{path} is a file that is not a composition_jax "
                                          f"checkpoint; refusing to replace it")
            aside = path.with_name(f".{path.name}.replaced-{uuid.uuid4().hex[:8]}")
            os.replace(path, aside)
            self._replaced.append((aside, path))
        elif (path / str(step)).exists():
            aside = path / f".replaced-{step}-{uuid.uuid4().hex[:8]}"
            os.replace(path / str(step), aside)
            self._replaced.append((aside, path / str(step)))
            if self._manager is not None:
                self._manager.reload()
        ocp = _ocp()
        try:
            self._open().save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(nested), meta=ocp.args.JsonSave(record)), force=True)
            if not self.use_async:
                self.wait()
        except BaseException:
            self._put_back()
            raise

    def _put_back(self) -> None:
        for aside, where in reversed(self._replaced):
            if where.is_dir():
                shutil.rmtree(where, ignore_errors=True)
            elif where.exists():
                where.unlink()
            os.replace(aside, where)
        self._replaced.clear()

    def wait(self) -> None:
        """Block until every started step is committed; raise a failed write's error (what it
        replaced is put back)."""
        if self._manager is None:
            return
        try:
            self._manager.wait_until_finished()
        except BaseException:
            self._put_back()
            raise
        for aside, _ in self._replaced:
            if aside.is_dir():
                shutil.rmtree(aside, ignore_errors=True)
            else:
                aside.unlink(missing_ok=True)
        self._replaced.clear()

    def close(self) -> None:
        """:meth:`wait`, then release the manager."""
        try:
            self.wait()
        finally:
            if self._manager is not None:
                self._manager.close()
                self._manager = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def save_checkpoint(
    path: str | os.PathLike,
    tree: Any,
    metadata: dict | None = None,
    *,
    step: int = 0,
    max_to_keep: int | None = None,
) -> None:
    """Save ``tree`` (a pytree of arrays) and JSON-serializable ``metadata`` as step ``step`` of
    the orbax checkpoint directory ``path``; returns when the step is committed (a synchronous
    :class:`CheckpointWriter`).

    The integrity record (fingerprint, key implementations, SHA-256 of the arrays and of the
    record) is written next to the arrays. An existing checkpoint of the same step is replaced,
    and a file of the previous single-file format at ``path`` is replaced by the directory: what
    is replaced is moved aside first and put back if the new save fails.

    Args:
      path: the checkpoint directory (created if missing).
      tree: a pytree of arrays (typed PRNG keys allowed); leaves of object or structured dtype
        are refused before anything is written.
      metadata: JSON-serializable mapping stored in the record.
      step: non-negative step number, the name of the step directory.
      max_to_keep: keep only the newest ``max_to_keep`` steps (``None``: keep all).

    Raises:
      ValueError: unsupported leaves, non-JSON metadata, a bad ``step`` or ``max_to_keep``.
      CheckpointError: ``path`` is a file that is not a checkpoint of this library.
    """
    with CheckpointWriter(path, max_to_keep=max_to_keep, use_async=False) as w:
        w.save(tree, metadata, step=step)


# -- load ----------------------------------------------------------------------------------------
def _read_record(m, path: Path, step: int) -> dict:
    ocp = _ocp()
    where = f"{path} step {step}"
    try:
        record = m.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    except Exception as e:  # noqa: BLE001 - any failure to read the record means corruption
        raise CheckpointError(f"{where} is corrupt: unreadable integrity record ({_brief(e)})") \
            from None
    version = record.get("format_version") if isinstance(record, dict) else None
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{where} is corrupt: unreadable integrity record (no "
                              f"format_version)")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{where} was written by a newer version of composition_jax (checkpoint format "
            f"{version}); this version reads format {FORMAT_VERSION}: upgrade composition_jax")
    if version < FORMAT_VERSION:
        raise CheckpointError(f"{where} is corrupt: a checkpoint directory with record format "
                              f"{version} (directories start at format {FORMAT_VERSION})")
    why = _check_record_fields(record)
    if why is not None:
        raise CheckpointError(f"{where} is corrupt: malformed integrity record ({why})")
    if _record_digest(record) != record["sha256"]:
        raise CheckpointError(
            f"{where} is corrupt: SHA-256 of the integrity record does not match (its metadata, "
            f"step or fingerprint was modified or damaged after it was written)")
    if record["step"] != step:
        raise CheckpointError(f"{where} is corrupt: its record says step {record['step']}")
    return record


def read_checkpoint_header(path: str | os.PathLike, *, step: int | None = None) -> dict:
    """The verified integrity record of step ``step`` (default: the latest): ``format_version``,
    ``step``, ``fingerprint``, ``key_impls``, ``metadata``, ``arrays_sha256``, ``sha256``.

    Only the record is verified here (checks 1-2); the arrays are verified by
    :func:`load_checkpoint`. For a file of the previous format, its verified header.

    Raises:
      CheckpointError: as :func:`load_checkpoint` for checks 1-2.
    """
    p = Path(path)
    if _is_legacy_file(p):
        return _read_legacy(p)[0]
    with _open_for_reading(p) as m:
        return _read_record(m, p, _pick_step(m, p, step))


def _first_difference(saved: list, want: list) -> str | None:
    """The first difference between a saved fingerprint and the target's, in words."""
    by_path = {p: (tuple(s), d) for p, s, d in saved}
    want_paths = set()
    for p, shape, dtype in want:
        want_paths.add(p)
        if p not in by_path:
            return f"leaf {_show(p)} missing from file"
        s_shape, s_dtype = by_path[p]
        if s_shape != tuple(shape):
            return f"leaf {_show(p)}: shape {s_shape} in file, {tuple(shape)} expected"
        if s_dtype != dtype:
            return f"leaf {_show(p)}: dtype {s_dtype} in file, {dtype} expected"
    extra = [p for p, _, _ in saved if p not in want_paths]
    if extra:
        return (f"leaf {_show(extra[0])} in file is not in the target "
                f"({len(extra)} extra {'leaf' if len(extra) == 1 else 'leaves'})")
    return None


def _wrap_key(name: str, what: str, impl: str, data: Any) -> jax.Array:
    try:
        return jax.random.wrap_key_data(jnp.asarray(data), impl=impl)
    except Exception as e:  # noqa: BLE001 - a bad key implementation or key data
        raise CheckpointError(f"{name} is corrupt: {what} is not valid {impl} key data "
                              f"({e})") from None


def load_checkpoint(
    path: str | os.PathLike,
    target: Any,
    *,
    step: int | None = None,
    check_metadata: Callable[[dict], None] | None = None,
) -> tuple[Any, dict]:
    """Load a checkpoint into the structure of ``target``.

    Args:
      path: a directory written by :func:`save_checkpoint`, or a single-file checkpoint of the
        previous format.
      target: a pytree with the expected structure; leaves may be arrays or
        ``jax.ShapeDtypeStruct`` (e.g. from ``jax.eval_shape``); a leaf's ``sharding``, if set,
        is the sharding of the restored array.
      step: the step to load (default: the latest).
      check_metadata: called with the verified metadata before the leaves are compared; raise
        :class:`CheckpointError` from it to refuse the checkpoint (the trainer compares its
        configuration here).

    Returns:
      ``(tree, metadata)``; the arrays are bit-identical to the saved ones.

    Raises:
      CheckpointError: missing or unreadable checkpoint, corrupt, truncated or edited files, a
        newer format, metadata refused by ``check_metadata``, or a leaf missing, extra, or of
        another shape or dtype than ``target``'s (the message names the first such leaf).
    """
    p = Path(path)
    if _is_legacy_file(p):
        if step is not None:
            raise CheckpointError(f"{p} is a single-file checkpoint; it has no step {step}")
        return _load_legacy(p, target, check_metadata)
    with _open_for_reading(p) as m:
        step = _pick_step(m, p, step)
        name = f"{p} step {step}"
        record = _read_record(m, p, step)
        meta = record["metadata"]
        if check_metadata is not None:
            check_metadata(meta)
        saved, want = record["fingerprint"], tree_fingerprint(target)
        diff = _first_difference(saved, want)
        if diff is not None:
            raise CheckpointError(f"{name} does not match the target: {diff}")
        key_impls = record["key_impls"]
        abstract = []
        for (pth, shape, dtype), (comps, leaf) in zip(want, _leaf_parts(target)):
            sharding = getattr(leaf, "sharding", None)
            if pth in key_impls:  # the target leaf is a key of this dtype (fingerprints agree)
                kd = jax.eval_shape(jax.random.key_data, leaf)
                shape, dtype, sharding = kd.shape, kd.dtype, None
            abstract.append((comps, jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype),
                                                         sharding=sharding)))
        ocp = _ocp()
        try:
            restored = m.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(_nest(abstract)))).state
            leaves = []
            for comps, spec in abstract:
                node = restored
                for c in comps:
                    node = node[c]
                leaves.append((comps, node, spec))
        except Exception as e:  # noqa: BLE001 - any failure to read the arrays means corruption
            raise CheckpointError(f"{name} is corrupt: orbax could not read the arrays "
                                  f"({_brief(e)})") from None
    hashed, out = [], []
    for (pth, _, _), (_, arr, spec) in zip(want, leaves):
        host = np.asarray(jax.device_get(arr))
        if (host.shape, host.dtype) != (tuple(spec.shape), np.dtype(spec.dtype)):
            raise CheckpointError(f"{name} is corrupt: leaf {_show(pth)} is {host.dtype} "
                                  f"{host.shape}, the record says {spec.dtype} {spec.shape}")
        hashed.append((pth, host))
        out.append(arr)
    if _arrays_digest(hashed) != record["arrays_sha256"]:
        raise CheckpointError(f"{name} is corrupt: SHA-256 of the restored arrays does not match "
                              f"the integrity record (the array files were modified or damaged)")
    out = [_wrap_key(name, f"leaf {_show(pth)}", key_impls[pth], a) if pth in key_impls else a
           for (pth, _, _), a in zip(want, out)]
    return jax.tree.unflatten(jax.tree.structure(target), out), meta


# -- the previous single-file format (read only) -------------------------------------------------
def _check_legacy_header(header: dict) -> str | None:
    """Why a format-2 ``header`` is malformed, or ``None``."""
    if not isinstance(header.get("payload_bytes"), int) or header["payload_bytes"] < 0:
        return "payload_bytes is not a non-negative integer"
    fp = header.get("fingerprint")
    if not isinstance(fp, list):
        return "fingerprint is not a list"
    for e in fp:
        if not (isinstance(e, list) and len(e) == 3 and isinstance(e[0], str)
                and isinstance(e[1], list) and all(isinstance(n, int) and n >= 0 for n in e[1])
                and isinstance(e[2], str)):
            return f"bad fingerprint entry {e!r}"
    if len({e[0] for e in fp}) != len(fp):
        return "duplicate key paths in the fingerprint"
    ki = header.get("key_impls")
    if not isinstance(ki, dict) or not all(isinstance(v, str) for v in ki.values()):
        return "key_impls is not a mapping of key paths to names"
    if not isinstance(header.get("metadata"), dict):
        return "metadata is not a JSON object"
    return None


def _read_legacy(path: Path) -> tuple[dict, bytes]:
    with open(path, "rb") as f:
        blob = f.read()
    if blob[: len(MAGIC)] != MAGIC:
        raise CheckpointError(f"{path} is not a composition_jax checkpoint (bad magic bytes)")
    if len(blob) < _PREFIX:
        raise CheckpointError(f"{path} is corrupt: truncated header ({len(blob)} bytes)")
    (hlen,) = struct.unpack("<Q", blob[len(MAGIC) : _PREFIX])
    if _PREFIX + hlen > len(blob):
        raise CheckpointError(
            f"{path} is corrupt: truncated header (header length {hlen}, file has "
            f"{len(blob)} bytes)")
    try:
        header = json.loads(blob[_PREFIX : _PREFIX + hlen].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{path} is corrupt: unreadable header ({e})") from None
    version = header.get("format_version") if isinstance(header, dict) else None
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{path} is corrupt: unreadable header (no format_version)")
    if version < LEGACY_FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by an older version of composition_jax (checkpoint format "
            f"{version}, whose header is not covered by the file's hash); this version reads "
            f"formats {LEGACY_FORMAT_VERSION} and {FORMAT_VERSION}: retrain, or load it with the "
            f"version that wrote it and save it again with this one")
    if version != LEGACY_FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer version of composition_jax (single-file checkpoint "
            f"format {version}); this version reads format {LEGACY_FORMAT_VERSION} files and "
            f"format {FORMAT_VERSION} directories: upgrade composition_jax")
    why = _check_legacy_header(header)
    if why is not None:
        raise CheckpointError(f"{path} is corrupt: malformed header ({why})")
    expected = _PREFIX + hlen + header["payload_bytes"] + _DIGEST_BYTES
    if len(blob) != expected:
        raise CheckpointError(
            f"{path} is corrupt: file has {len(blob)} bytes, its header announces {expected} "
            f"({'truncated write?' if len(blob) < expected else 'trailing bytes'})")
    body, digest = blob[:-_DIGEST_BYTES], blob[-_DIGEST_BYTES:]
    if hashlib.sha256(body).digest() != digest:
        raise CheckpointError(
            f"{path} is corrupt: SHA-256 over header and payload does not match (the file was "
            f"modified or damaged after it was written)")
    return header, body[_PREFIX + hlen :]


def _load_legacy(path: Path, target: Any, check_metadata) -> tuple[Any, dict]:
    header, payload = _read_legacy(path)
    meta = header["metadata"]
    if check_metadata is not None:
        check_metadata(meta)
    saved, want = header["fingerprint"], tree_fingerprint(target)
    diff = _first_difference(saved, want)
    if diff is not None:
        raise CheckpointError(f"{path} does not match the target: {diff}")
    try:
        arrays = serialization.msgpack_restore(payload)
    except Exception as e:  # noqa: BLE001 - any decoding failure means corruption
        raise CheckpointError(f"{path} is corrupt: cannot decode payload ({e})") from None
    if not isinstance(arrays, dict):
        raise CheckpointError(f"{path} is corrupt: payload is not a mapping of leaves")
    extra = sorted(set(arrays) - {p for p, _, _ in saved})
    if extra:
        raise CheckpointError(
            f"{path} is corrupt: payload leaf {_show(str(extra[0]))} is not in the header")
    key_impls = header["key_impls"]
    out = []
    for p, shape, dtype in want:
        if p not in arrays:
            raise CheckpointError(f"{path} is corrupt: leaf {_show(p)} missing from the payload")
        a = arrays[p]
        if not isinstance(a, np.ndarray):
            raise CheckpointError(f"{path} is corrupt: payload leaf {_show(p)} is not an array")
        impl = key_impls.get(p)
        if impl is not None:
            a = _wrap_key(str(path), f"payload leaf {_show(p)}", impl, a)
        found = (str(a.dtype), tuple(a.shape))
        if found != (dtype, tuple(shape)):
            raise CheckpointError(
                f"{path} is corrupt: payload leaf {_show(p)} is {found[0]} {found[1]}, the "
                f"header says {dtype} {tuple(shape)}")
        out.append(a if impl is not None else jnp.asarray(a))
    return jax.tree.unflatten(jax.tree.structure(target), out), meta
