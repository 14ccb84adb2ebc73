r"""Checkpoints: flax msgpack payload + a JSON header, the whole file covered by one SHA-256.

File layout (format version 2, little endian)::

    b"CJAXCKPT" | uint64 header length | header (UTF-8 JSON) | payload (flax msgpack) | digest

where ``digest`` is the 32-byte SHA-256 of *every byte before it* (magic, length, header and
payload). The header holds the format version, the payload length, the *fingerprint* of the saved
pytree (for every leaf: its key path such as ``params/Dense_0/kernel``, its shape and dtype), the
PRNG key implementations and free-form JSON metadata (:class:`~.trainer.DSMTrainer` stores its
configuration there). The payload maps each key path to its array.

Loading checks, in order, and raises :class:`CheckpointError` (a ``ValueError``) naming the first
problem; no ``KeyError``, ``struct.error`` or JSON error escapes:

1. the magic bytes, the header length and the header (JSON object with the expected fields);
2. the format version: files of format 1 (no digest over the header) are refused with a message
   saying they were written by an older version;
3. the file length and the SHA-256 over header and payload, so an edited metadata value, a header
   spliced onto another file's payload, a truncated or a garbled file are all refused;
4. the caller's metadata check (``check_metadata``; the trainer compares its configuration);
5. every leaf of the target against the fingerprint, in the target's flattening order: a leaf
   missing from the file, then its shape, then its dtype, then leaves in the file that the target
   does not have;
6. the decoded payload against the fingerprint (same leaves, shapes, dtypes), so a file whose
   digest was recomputed after its payload was replaced still cannot deliver arrays of the wrong
   shape.

The digest detects corruption and mix-ups, not forgery: anyone who can write the file can
recompute it. Keep checkpoints in folders only you can write (the experiments' parameter cache
refuses others, see :func:`composition_jax.experiments._common.cache_dir`).

Typed PRNG keys are stored as their raw ``key_data`` with the implementation name.

Writes are atomic: the file is written to a temporary file (mode ``0o600``) in the same directory,
flushed and ``fsync``-ed, then ``os.replace``-d over the destination, so a crash never leaves a
half-written checkpoint under the final name.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "load_checkpoint",
    "read_checkpoint_header",
    "save_checkpoint",
    "tree_fingerprint",
]

MAGIC = b"CJAXCKPT"
FORMAT_VERSION = 2
_DIGEST_BYTES = 32  # SHA-256
_PREFIX = len(MAGIC) + 8  # magic + uint64 header length


class CheckpointError(ValueError):
    """A checkpoint file is corrupt, of an unsupported version, or does not match the target."""


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


def save_checkpoint(path: str | os.PathLike, tree: Any, metadata: dict | None = None) -> None:
    """Atomically write ``tree`` (a pytree of arrays) and JSON-serializable ``metadata``.

    The SHA-256 stored at the end of the file covers the header (metadata included) and the
    payload.
    """
    fingerprint = tree_fingerprint(tree)
    arrays, key_impls = {}, {}
    for (p, _, _), leaf in zip(fingerprint, jax.tree.leaves(tree)):
        if _is_key(leaf):
            key_impls[p] = str(jax.random.key_impl(leaf))
            leaf = jax.random.key_data(leaf)
        arrays[p] = np.asarray(jax.device_get(leaf))
    payload = serialization.msgpack_serialize(arrays)
    header = {
        "format_version": FORMAT_VERSION,
        "payload_bytes": len(payload),
        "fingerprint": fingerprint,
        "key_impls": key_impls,
        "metadata": metadata or {},
    }
    hbytes = json.dumps(header, separators=(",", ":")).encode("utf-8")  # keeps field order
    body = MAGIC + struct.pack("<Q", len(hbytes)) + hbytes + payload
    digest = hashlib.sha256(body).digest()
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-ckpt-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(body)
            f.write(digest)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _check_header_fields(header: dict) -> str | None:
    """Why ``header`` (already of the current version) is malformed, or ``None``."""
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


def _read(path: str | os.PathLike) -> tuple[dict, bytes]:
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except IsADirectoryError:
        raise CheckpointError(f"{path} is a directory, not a checkpoint file") from None
    if blob[: len(MAGIC)] != MAGIC:
        raise CheckpointError(f"{path} is not a composition_jax checkpoint (bad magic bytes)")
    if len(blob) < _PREFIX:
        raise CheckpointError(f"{path} is corrupt: truncated header ({len(blob)} bytes)")
    (hlen,) = struct.unpack("<Q", blob[len(MAGIC) : _PREFIX])
    if _PREFIX + hlen > len(blob):
        raise CheckpointError(
            f"{path} is corrupt: truncated header (header length {hlen}, file has "
            f"{len(blob)} bytes)"
        )
    try:
        header = json.loads(blob[_PREFIX : _PREFIX + hlen].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{path} is corrupt: unreadable header ({e})") from None
    version = header.get("format_version") if isinstance(header, dict) else None
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{path} is corrupt: unreadable header (no format_version)")
    if version < FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by an older version of composition_jax (checkpoint format "
            f"{version}, whose header is not covered by the file's hash); this version reads "
            f"format {FORMAT_VERSION}: retrain, or load it with the version that wrote it and "
            f"save it again with this one"
        )
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer version of composition_jax (checkpoint format "
            f"{version}); this version reads format {FORMAT_VERSION}: upgrade composition_jax"
        )
    why = _check_header_fields(header)
    if why is not None:
        raise CheckpointError(f"{path} is corrupt: malformed header ({why})")
    expected = _PREFIX + hlen + header["payload_bytes"] + _DIGEST_BYTES
    if len(blob) != expected:
        raise CheckpointError(
            f"{path} is corrupt: file has {len(blob)} bytes, its header announces {expected} "
            f"({'truncated write?' if len(blob) < expected else 'trailing bytes'})"
        )
    body, digest = blob[:-_DIGEST_BYTES], blob[-_DIGEST_BYTES:]
    if hashlib.sha256(body).digest() != digest:
        raise CheckpointError(
            f"{path} is corrupt: SHA-256 over header and payload does not match (the file was "
            f"modified or damaged after it was written)"
        )
    return header, body[_PREFIX + hlen :]


def read_checkpoint_header(path: str | os.PathLike) -> dict:
    """The verified header: ``format_version``, ``fingerprint``, ``key_impls``, ``metadata``, ...

    Raises:
      CheckpointError: as :func:`load_checkpoint` for the file-level checks (1-3).
    """
    return _read(path)[0]


def _first_difference(saved: list, want: list) -> str | None:
    """The first difference between a file's fingerprint and the target's, in words."""
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


def load_checkpoint(
    path: str | os.PathLike,
    target: Any,
    *,
    check_metadata: Callable[[dict], None] | None = None,
) -> tuple[Any, dict]:
    """Load a checkpoint into the structure of ``target``.

    Args:
      path: file written by :func:`save_checkpoint`.
      target: a pytree with the expected structure; leaves may be arrays or
        ``jax.ShapeDtypeStruct`` (e.g. from ``jax.eval_shape``).
      check_metadata: called with the verified metadata before the leaves are compared; raise
        :class:`CheckpointError` from it to refuse the file (the trainer compares its
        configuration here).

    Returns:
      ``(tree, metadata)``; the arrays are bit-identical to the saved ones.

    Raises:
      CheckpointError: corrupt, truncated or edited file, an older or newer format, metadata
        refused by ``check_metadata``, or a leaf missing, extra, or of another shape or dtype
        than ``target``'s (the message names the first such leaf).
    """
    name = os.fspath(path)
    header, payload = _read(path)
    meta = header["metadata"]
    if check_metadata is not None:
        check_metadata(meta)
    saved, want = header["fingerprint"], tree_fingerprint(target)
    diff = _first_difference(saved, want)
    if diff is not None:
        raise CheckpointError(f"{name} does not match the target: {diff}")
    try:
        arrays = serialization.msgpack_restore(payload)
    except Exception as e:  # noqa: BLE001 - any decoding failure means corruption
        raise CheckpointError(f"{name} is corrupt: cannot decode payload ({e})") from None
    if not isinstance(arrays, dict):
        raise CheckpointError(f"{name} is corrupt: payload is not a mapping of leaves")
    extra = sorted(set(arrays) - {p for p, _, _ in saved})
    if extra:
        raise CheckpointError(
            f"{name} is corrupt: payload leaf {_show(str(extra[0]))} is not in the header")
    treedef = jax.tree.structure(target)
    key_impls = header["key_impls"]
    out = []
    for p, shape, dtype in want:
        if p not in arrays:
            raise CheckpointError(f"{name} is corrupt: leaf {_show(p)} missing from the payload")
        a = arrays[p]
        if not isinstance(a, np.ndarray):
            raise CheckpointError(f"{name} is corrupt: payload leaf {_show(p)} is not an array")
        impl = key_impls.get(p)
        if impl is None:
            found = (str(a.dtype), tuple(a.shape))
        else:
            try:
                a = jax.random.wrap_key_data(jnp.asarray(a), impl=impl)
            except Exception as e:  # noqa: BLE001 - a bad key implementation or key data
                raise CheckpointError(f"{name} is corrupt: payload leaf {_show(p)} is not "
                                      f"valid {impl} key data ({e})") from None
            found = (str(a.dtype), tuple(a.shape))
        if found != (dtype, tuple(shape)):
            raise CheckpointError(
                f"{name} is corrupt: payload leaf {_show(p)} is {found[0]} {found[1]}, the "
                f"header says {dtype} {tuple(shape)}"
            )
        leaf = a if impl is not None else jnp.asarray(a)
        out.append(leaf)
    return jax.tree.unflatten(treedef, out), meta
