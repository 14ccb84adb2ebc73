r"""Checkpoints: flax msgpack payload + a JSON header with a structure fingerprint.

File layout (little endian)::

    b"CJAXCKPT" | uint64 header length | header (UTF-8 JSON) | payload (flax msgpack)

The header holds the format version, the SHA-256 and length of the payload, the *fingerprint* of
the saved pytree (for every leaf: its key path, shape and dtype) and free-form JSON metadata
(network configuration, step, ...). Loading checks, in order: the magic bytes, the header, the
format version, the payload length and hash (a truncated or corrupted file raises
:class:`CheckpointError`), then compares the fingerprint with the target structure (a checkpoint of
another architecture or optimizer raises :class:`CheckpointError` naming the first differing leaf).
Typed PRNG keys are stored as their raw ``key_data`` with the implementation name.

Writes are atomic: the file is written to a temporary file in the same directory, flushed and
``fsync``-ed, then ``os.replace``-d over the destination, so a crash never leaves a half-written
checkpoint under the final name.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
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
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is corrupt, of an unsupported version, or does not match the target."""


def _is_key(leaf: Any) -> bool:
    dt = getattr(leaf, "dtype", None)
    return dt is not None and jax.dtypes.issubdtype(dt, jax.dtypes.prng_key)


def tree_fingerprint(tree: Any) -> list[list[Any]]:
    """``[[key_path, shape, dtype], ...]`` for every leaf of ``tree`` (arrays or
    ``jax.ShapeDtypeStruct``), in flattening order."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        shape = list(np.shape(leaf)) if not hasattr(leaf, "shape") else list(leaf.shape)
        dtype = str(leaf.dtype) if hasattr(leaf, "dtype") else str(np.asarray(leaf).dtype)
        out.append([jax.tree_util.keystr(path), shape, dtype])
    return out


def save_checkpoint(path: str | os.PathLike, tree: Any, metadata: dict | None = None) -> None:
    """Atomically write ``tree`` (a pytree of arrays) and JSON-serializable ``metadata``."""
    leaves = jax.tree.leaves(tree)
    arrays, key_impls = {}, {}
    for i, leaf in enumerate(leaves):
        if _is_key(leaf):
            key_impls[str(i)] = str(jax.random.key_impl(leaf))
            leaf = jax.random.key_data(leaf)
        arrays[str(i)] = np.asarray(jax.device_get(leaf))
    payload = serialization.msgpack_serialize(arrays)
    header = {
        "format_version": FORMAT_VERSION,
        "payload_bytes": len(payload),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "fingerprint": tree_fingerprint(tree),
        "key_impls": key_impls,
        "metadata": metadata or {},
    }
    hbytes = json.dumps(header, sort_keys=True).encode("utf-8")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-ckpt-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC)
            f.write(struct.pack("<Q", len(hbytes)))
            f.write(hbytes)
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _read(path: str | os.PathLike) -> tuple[dict, bytes]:
    path = os.fspath(path)
    with open(path, "rb") as f:
        blob = f.read()
    if blob[: len(MAGIC)] != MAGIC:
        raise CheckpointError(f"{path} is not a composition_jax checkpoint (bad magic bytes)")
    off = len(MAGIC)
    if len(blob) < off + 8:
        raise CheckpointError(f"{path} is corrupt: truncated header")
    (hlen,) = struct.unpack("<Q", blob[off : off + 8])
    off += 8
    try:
        header = json.loads(blob[off : off + hlen].decode("utf-8"))
        version = header["format_version"]
    except Exception as e:  # noqa: BLE001 - any decoding failure means corruption
        raise CheckpointError(f"{path} is corrupt: unreadable header ({e})") from None
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version}; this library reads {FORMAT_VERSION}"
        )
    payload = blob[off + hlen :]
    if len(payload) != header["payload_bytes"]:
        raise CheckpointError(
            f"{path} is corrupt: payload has {len(payload)} bytes, header says "
            f"{header['payload_bytes']} (truncated write?)"
        )
    if hashlib.sha256(payload).hexdigest() != header["payload_sha256"]:
        raise CheckpointError(f"{path} is corrupt: payload SHA-256 does not match the header")
    return header, payload


def read_checkpoint_header(path: str | os.PathLike) -> dict:
    """The validated header: ``format_version``, ``fingerprint``, ``metadata``, ..."""
    return _read(path)[0]


def load_checkpoint(path: str | os.PathLike, target: Any) -> tuple[Any, dict]:
    """Load a checkpoint into the structure of ``target``.

    Args:
      path: file written by :func:`save_checkpoint`.
      target: a pytree with the expected structure; leaves may be arrays or
        ``jax.ShapeDtypeStruct`` (e.g. from ``jax.eval_shape``).

    Returns:
      ``(tree, metadata)``; the arrays are bit-identical to the saved ones.

    Raises:
      CheckpointError: corrupt file, unsupported version, or a structure (path/shape/dtype)
        different from ``target``'s.
    """
    header, payload = _read(path)
    saved, want = header["fingerprint"], tree_fingerprint(target)
    if saved != want:
        msg = f"{os.fspath(path)} does not match the target structure"
        if len(saved) != len(want):
            msg += f": saved tree has {len(saved)} leaves, target has {len(want)}"
        for s, w in zip(saved, want):
            if s != w:
                msg += (
                    f"; first difference: saved {s[0]} shape {tuple(s[1])} {s[2]} vs "
                    f"target {w[0]} shape {tuple(w[1])} {w[2]}"
                )
                break
        meta = header.get("metadata", {})
        if "network" in meta:
            msg += f" (checkpoint network: {meta['network']})"
        raise CheckpointError(msg)
    try:
        arrays = serialization.msgpack_restore(payload)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{os.fspath(path)} is corrupt: cannot decode payload ({e})") from None
    leaves, treedef = jax.tree.flatten(target)
    out = []
    for i in range(len(leaves)):
        a = arrays[str(i)]
        impl = header["key_impls"].get(str(i))
        out.append(jax.random.wrap_key_data(jnp.asarray(a), impl=impl) if impl else jnp.asarray(a))
    return jax.tree.unflatten(treedef, out), header.get("metadata", {})
