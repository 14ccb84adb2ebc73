"""Checkpoints that must not load (issue 13, item 4), for the orbax checkpoint directories and
for the single-file format 2 that is still read.

Each finding has a test here:

* a VP/eps checkpoint restored by a VE/score trainer (or another network, parameterization,
  schedule parameter, training setting) is refused with every difference named;
* the digests cover the metadata: an edited metadata value, one checkpoint's record with another
  checkpoint's arrays, a record whose digest was recomputed around foreign arrays, a missing leaf
  are refused with :class:`CheckpointError` (never arrays of the wrong shape, never ``KeyError``);
* every truncation and every single-byte change of a format-2 file is refused with
  ``CheckpointError`` (the orbax directories' sweep is in ``test_orbax_checkpoints.py``);
* target mismatches (missing, extra leaf; dtype; shape) name the leaf; format-1 files are refused
  as written by an older version, newer formats as written by a newer one;
* the learned-model cache lives in a per-user folder (mode 0o700) and a folder that others can
  write, or that another user owns, is ignored with a warning (the model is retrained); a cache
  entry of format 2 is still served;
* the round trip of a trained state is bit-identical.

``_write_v2`` writes format 2 as the release that used it did (this library only reads it), and
the file-crafting helpers recompute lengths and digests, so these tests exercise the checks
themselves, not only the format change.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import re
import shutil
import struct
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import serialization

import composition_jax as cj
from composition_jax import nn, training
from composition_jax.experiments import _common
from composition_jax.training import checkpoint as ckpt

Err = training.CheckpointError
MAGIC = b"CJAXCKPT"


def _write_v2(path, tree, metadata=None):
    """A format-2 file: ``MAGIC | uint64 header length | header | msgpack payload | SHA-256``."""
    fingerprint = ckpt.tree_fingerprint(tree)
    arrays, key_impls = {}, {}
    for (p, _, _), leaf in zip(fingerprint, jax.tree.leaves(tree)):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            key_impls[p] = str(jax.random.key_impl(leaf))
            leaf = jax.random.key_data(leaf)
        arrays[p] = np.asarray(leaf)
    payload = serialization.msgpack_serialize(arrays)
    header = {"format_version": 2, "payload_bytes": len(payload), "fingerprint": fingerprint,
              "key_impls": key_impls, "metadata": metadata or {}}
    h = json.dumps(header, separators=(",", ":")).encode()
    body = MAGIC + struct.pack("<Q", len(h)) + h + payload
    path.write_bytes(body + hashlib.sha256(body).digest())


def _record_file(path, step):
    return path / str(step) / "meta" / "metadata"


def _edit_record(path, step, edit, *, rehash=False):
    """Apply ``edit`` to the JSON integrity record of ``path/step`` (recomputing its digest as
    the library does when ``rehash``)."""
    f = _record_file(path, step)
    record = json.loads(f.read_text())
    edit(record)
    if rehash:
        record["sha256"] = ckpt._record_digest(record)
    f.write_text(json.dumps(record))


def _net(hidden=4):
    return nn.MLPScoreNet(dim=2, hidden=hidden, depth=0)


def _trainer(net=None, schedule=None, **kw):
    kw = {"batch_size": 8, "steps_per_call": 4, **kw}
    return training.DSMTrainer(net or _net(), schedule or cj.VPSchedule(), **kw)


def _split(blob: bytes) -> tuple[dict, bytes]:
    """(header, everything after it) of a checkpoint file."""
    (hlen,) = struct.unpack("<Q", blob[8:16])
    return json.loads(blob[16 : 16 + hlen]), blob[16 + hlen :]


def _payload(blob: bytes) -> bytes:
    header, rest = _split(blob)
    return rest[: header["payload_bytes"]]


def _forge(header: dict, payload: bytes) -> bytes:
    """A self-consistent file: lengths and hashes recomputed as the library under test does."""
    header = dict(header, payload_bytes=len(payload))
    if "payload_sha256" in header:
        header["payload_sha256"] = hashlib.sha256(payload).hexdigest()
    h = json.dumps(header).encode()
    body = MAGIC + struct.pack("<Q", len(h)) + h + payload
    return body + hashlib.sha256(body).digest()


def _with_header(blob: bytes, header: dict) -> bytes:
    """Replace the header, keep the rest of the file (payload and trailer) byte for byte."""
    h = json.dumps(header).encode()
    return MAGIC + struct.pack("<Q", len(h)) + h + _split(blob)[1]


def _leaves_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


_DATA = np.random.default_rng(0).normal(size=(32, 2)).astype(np.float32)


@pytest.fixture(scope="module")
def trained():
    """A tiny VP/eps trainer and its state after 6 steps (compiled under the promotion rules
    that conftest sets for every test, so the tests reuse this compilation)."""
    tr = _trainer()
    with jax.numpy_rank_promotion("raise"), jax.numpy_dtype_promotion("strict"):
        state, _ = tr.train(tr.init(jax.random.key(3)), _DATA, 6, progress=False)
    return tr, state


def test_trained_round_trip_is_bit_identical(trained, tmp_path):
    tr, state = trained
    path = tmp_path / "m"
    tr.save(path, state)
    restored = _trainer().restore(path)  # a fresh trainer of the same configuration
    _leaves_equal(restored, state)
    assert int(restored.step) == 6
    header = training.read_checkpoint_header(path)
    assert header["format_version"] == training.FORMAT_VERSION == 3
    assert header["step"] == 6 and training.checkpoint_steps(path) == [6]
    assert header["metadata"]["trainer"]["schedule"]["type"] == "VPSchedule"
    assert header["metadata"]["trainer"]["parameterization"] == "eps"


def test_trainer_refuses_another_training_configuration(key, tmp_path):
    """The finding: a VP/eps checkpoint loaded silently into a VE/score trainer."""
    tr = _trainer()
    path = tmp_path / "vp"
    tr.save(path, tr.init(key))
    ve = _trainer(schedule=cj.VESchedule(), parameterization="score", weighting="score")
    with pytest.raises(Err, match=re.escape(
            "does not match this trainer in schedule, parameterization, weighting: "
            "checkpoint schedule VPSchedule(beta_min=0.1, beta_max=20.0, t_max=1.0) != "
            "trainer's VESchedule(sigma_min=0.01, sigma_max=50.0, t_max=1.0); checkpoint "
            "parameterization 'eps' != trainer's 'score'; checkpoint weighting 'eps' != "
            "trainer's 'score'")):
        ve.restore(path)
    with pytest.raises(Err, match=re.escape("checkpoint parameterization 'eps' != trainer's "
                                            "'score'")):
        _trainer(parameterization="score").restore(path, strict=False)
    with pytest.raises(Err, match=re.escape("checkpoint schedule VPSchedule(beta_min=0.1, "
                                            "beta_max=20.0, t_max=1.0) != trainer's VPSchedule("
                                            "beta_min=0.1, beta_max=10.0, t_max=1.0)")):
        _trainer(schedule=cj.VPSchedule(beta_max=10.0)).restore(path)
    with pytest.raises(Err, match=re.escape("checkpoint network MLPScoreNet(dim=2, hidden=4, "
                                            "depth=0, num_conditions=None) != trainer's "
                                            "MLPScoreNet(dim=2, hidden=6, depth=0, ")):
        _trainer(net=_net(6)).restore(path)
    # training settings: refused by default (exact resumption), accepted with strict=False
    with pytest.raises(Err, match=r"checkpoint batch_size 8 != trainer's 16 \(training "
                                  r"settings and data: restore\(..., strict=False\)"):
        _trainer(batch_size=16).restore(path)
    _leaves_equal(_trainer(batch_size=16).restore(path, strict=False), tr.init(key))
    _trainer(steps_per_call=3).restore(path)  # does not change the trajectory: accepted
    # the structure is still checked leaf by leaf: another optimizer's state
    with pytest.raises(Err, match=r"leaf opt_state/0/count in file is not in the target "
                                  r"\(\d+ extra leaves\)"):
        _trainer(optimizer=optax.sgd(1e-2)).restore(path, strict=False)
    # a checkpoint without a trainer configuration
    training.save_checkpoint(tmp_path / "raw", tr.init(key))
    with pytest.raises(Err, match="holds no trainer configuration"):
        tr.restore(tmp_path / "raw")


def test_edited_metadata_is_refused(key, tmp_path):
    """The finding: the header was outside the hash, so edited metadata loaded. Orbax directory:
    the integrity record's own SHA-256; format-2 file: the whole-file SHA-256."""
    tr = _trainer()
    path = tmp_path / "a"
    tr.save(path, tr.init(key))
    edits = {
        "step": lambda h: h["metadata"].update(step=12345),
        "schedule": lambda h: h["metadata"]["trainer"].update(
            schedule={"type": "VESchedule", "sigma_min": 0.01, "sigma_max": 50.0, "t_max": 1.0}),
        "note": lambda h: h["metadata"].update(note="added"),
        "fingerprint": lambda h: h["fingerprint"][0][1].append(1),
        "arrays digest": lambda h: h.update(arrays_sha256="0" * 64),
    }
    for name, edit in edits.items():
        bad = tmp_path / name
        shutil.copytree(path, bad)
        _edit_record(bad, 0, edit)
        with pytest.raises(Err, match="corrupt: SHA-256 of the integrity record does not match"):
            _trainer(schedule=cj.VESchedule()).restore(bad, strict=False)
    # the same length edit, in place
    blob = _record_file(path, 0).read_bytes()
    i = blob.index(b'"VPSchedule"')
    shutil.copytree(path, tmp_path / "inplace")
    _record_file(tmp_path / "inplace", 0).write_bytes(blob[:i] + b'"VESchedule"' + blob[i + 12:])
    with pytest.raises(Err, match="corrupt: SHA-256 of the integrity record"):
        _trainer(schedule=cj.VESchedule()).restore(tmp_path / "inplace")
    # a format-2 file: edited header values, then the same length edit in place
    _write_v2(tmp_path / "a.ckpt", tr.init(key), {"step": 0, "trainer": tr.config()})
    blob = (tmp_path / "a.ckpt").read_bytes()
    header, _ = _split(blob)
    for name, edit in list(edits.items())[:3]:
        h = json.loads(json.dumps(header))
        edit(h)
        (tmp_path / f"{name}.ckpt").write_bytes(_with_header(blob, h))
        with pytest.raises(Err, match="SHA-256|file has"):
            training.load_checkpoint(tmp_path / f"{name}.ckpt", tr.init(key))
    i = blob.index(b'"VPSchedule"')
    (tmp_path / "inplace.ckpt").write_bytes(blob[:i] + b'"VESchedule"' + blob[i + 12:])
    with pytest.raises(Err, match="corrupt: SHA-256"):
        _trainer(schedule=cj.VESchedule()).restore(tmp_path / "inplace.ckpt")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax's loop
def test_swapped_record_and_foreign_arrays_are_refused(key, tmp_path):
    """The finding: one model's header with another's payload loaded arrays of the wrong
    shape. Orbax directory: A's record with B's arrays, plainly and with A's record rewritten to
    carry B's array digest (self-consistent); format-2 file: the same splices."""
    a, b = {"w": jnp.zeros((2, 4)), "s": jnp.int32(1)}, {"w": jnp.ones((2, 6)), "s": jnp.int32(2)}
    training.save_checkpoint(tmp_path / "a", a)
    training.save_checkpoint(tmp_path / "b", b)
    swap = tmp_path / "swap"
    shutil.copytree(tmp_path / "a", swap)
    shutil.rmtree(swap / "0" / "state")
    shutil.copytree(tmp_path / "b" / "0" / "state", swap / "0" / "state")
    with pytest.raises(Err, match="step 0 is corrupt"):
        training.load_checkpoint(swap, a)
    # arrays of the same structure and shapes, other values: only the array digest sees it
    training.save_checkpoint(tmp_path / "c", {"w": jnp.ones((2, 4)), "s": jnp.int32(1)})
    mixed = tmp_path / "mixed"
    shutil.copytree(tmp_path / "a", mixed)
    shutil.rmtree(mixed / "0" / "state")
    shutil.copytree(tmp_path / "c" / "0" / "state", mixed / "0" / "state")
    with pytest.raises(Err, match="step 0 is corrupt: SHA-256 of the restored arrays does not "
                                  "match the integrity record"):
        training.load_checkpoint(mixed, a)
    b_digest = json.loads(_record_file(tmp_path / "b", 0).read_text())["arrays_sha256"]
    _edit_record(swap, 0, lambda r: r.update(arrays_sha256=b_digest), rehash=True)
    with pytest.raises(Err, match="step 0 is corrupt"):
        training.load_checkpoint(swap, a)
    # a record that lists a leaf the arrays lack: CheckpointError, not KeyError
    short = tmp_path / "short"
    shutil.copytree(tmp_path / "a", short)
    shutil.rmtree(short / "0" / "state")
    training.save_checkpoint(tmp_path / "w_only", {"w": a["w"]})
    shutil.copytree(tmp_path / "w_only" / "0" / "state", short / "0" / "state")
    with pytest.raises(Err, match="step 0 is corrupt: orbax could not read the arrays"):
        training.load_checkpoint(short, a)

    _write_v2(tmp_path / "a.ckpt", a)
    _write_v2(tmp_path / "b.ckpt", b)
    blob_a, blob_b = (tmp_path / "a.ckpt").read_bytes(), (tmp_path / "b.ckpt").read_bytes()
    ha, _ = _split(blob_a)
    hb, _ = _split(blob_b)
    # A's header (its payload length made to describe B's payload) spliced onto B's payload
    (tmp_path / "swap.ckpt").write_bytes(_with_header(blob_b, dict(
        ha, payload_bytes=hb["payload_bytes"])))
    with pytest.raises(Err, match="corrupt: SHA-256"):
        training.load_checkpoint(tmp_path / "swap.ckpt", a)
    # the same file with its digest recomputed (self-consistent): the payload is still checked
    (tmp_path / "forged.ckpt").write_bytes(_forge(ha, _payload(blob_b)))
    with pytest.raises(Err, match=re.escape("payload leaf w is float32 (2, 6), the header says "
                                            "float32 (2, 4)")):
        training.load_checkpoint(tmp_path / "forged.ckpt", a)
    only_w = serialization.msgpack_serialize({k: v for k, v in serialization.msgpack_restore(
        _payload(blob_a)).items() if k != "s"})
    (tmp_path / "short.ckpt").write_bytes(_forge(ha, only_w))
    with pytest.raises(Err, match=r"leaf s missing from the payload"):
        training.load_checkpoint(tmp_path / "short.ckpt", a)
    gc.collect()  # orbax's abandoned coroutines are finalized here, under this test's filter


@pytest.mark.parametrize("case, message", [
    ("missing", "leaf c missing from file"),
    ("extra", re.escape("leaf c in file is not in the target (1 extra leaf)")),
    ("dtype", "leaf w: dtype float16 in file, float32 expected"),
    ("shape", re.escape("leaf w: shape (3, 2) in file, (2, 3) expected")),
    ("nested", re.escape("leaf p/Dense_0/kernel: shape (2, 4) in file, (2, 6) expected")),
])
def test_target_mismatch_names_the_leaf(case, message, tmp_path):
    w = jnp.zeros((2, 3), jnp.float32)
    saved, target = {
        "missing": ({"w": w}, {"w": w, "c": w}),
        "extra": ({"w": w, "c": w}, {"w": w}),
        "dtype": ({"w": w.astype(jnp.float16)}, {"w": w}),
        "shape": ({"w": w.T}, {"w": w}),
        "nested": ({"p": {"Dense_0": {"kernel": jnp.zeros((2, 4))}}},
                   {"p": {"Dense_0": {"kernel": jnp.zeros((2, 6))}}}),
    }[case]
    training.save_checkpoint(tmp_path / "x", saved)
    _write_v2(tmp_path / "x.ckpt", saved)
    for path in (tmp_path / "x", tmp_path / "x.ckpt"):
        with pytest.raises(Err, match="does not match the target: " + message):
            training.load_checkpoint(path, jax.eval_shape(lambda: target))


def test_every_truncation_and_byte_change_of_a_format2_file_is_refused(key, tmp_path):
    tree = {"w": jnp.arange(6.0).reshape(2, 3), "k": jax.random.split(key)[0],
            "s": jnp.int32(7)}
    path = tmp_path / "t.ckpt"
    _write_v2(path, tree, {"note": "abc", "n": 3})
    blob = path.read_bytes()
    target = jax.eval_shape(lambda: tree)
    _leaves_equal(training.load_checkpoint(path, target)[0], tree)  # the reader reads it
    bad = tmp_path / "bad.ckpt"

    def refused(data: bytes, what: str):
        bad.write_bytes(data)
        try:
            training.load_checkpoint(bad, target)
        except Err:
            return
        except Exception as e:  # noqa: BLE001 - any other exception is the failure under test
            pytest.fail(f"{what}: {type(e).__name__} leaked: {e}")
        pytest.fail(f"{what}: the file loaded")

    for n in range(len(blob)):
        refused(blob[:n], f"truncated to {n} bytes")
    refused(blob + b"\0", "one trailing byte")
    for i in range(len(blob)):
        for flip in (0x01, 0x80):
            garbled = bytearray(blob)
            garbled[i] ^= flip
            refused(bytes(garbled), f"byte {i} ^ {flip:#x}")
    header, _ = _split(blob)
    for what, h in [("not an object", [1, 2]), ("no version", {"metadata": {}}),
                    ("no fingerprint", {k: v for k, v in header.items() if k != "fingerprint"}),
                    ("bad fingerprint", dict(header, fingerprint=[["w", "x", 1]])),
                    ("version is text", dict(header, format_version="2"))]:
        refused(_forge(h, _payload(blob)) if isinstance(h, dict) else
                MAGIC + struct.pack("<Q", 5) + b"[1,2]", what)
    bad.write_bytes(_forge(dict(header, key_impls=[]), _payload(blob)))
    with pytest.raises(Err, match=r"malformed header \(key_impls"):
        training.load_checkpoint(bad, target)


def test_old_and_newer_formats_are_refused(key, tmp_path):
    """A format-1 file (header outside the hash), written as the release before it did; files
    and directories announcing a format newer than this library's."""
    tree = {"w": jnp.arange(4.0), "s": jnp.int32(2)}
    leaves_with_path = jax.tree_util.tree_flatten_with_path(tree)[0]
    payload = serialization.msgpack_serialize(
        {str(i): np.asarray(leaf) for i, (_, leaf) in enumerate(leaves_with_path)})
    header = {"format_version": 1, "payload_bytes": len(payload),
              "payload_sha256": hashlib.sha256(payload).hexdigest(),
              "fingerprint": [[jax.tree_util.keystr(p), list(x.shape), str(x.dtype)]
                              for p, x in leaves_with_path],
              "key_impls": {}, "metadata": {}}
    h = json.dumps(header, sort_keys=True).encode()
    (tmp_path / "v1.ckpt").write_bytes(MAGIC + struct.pack("<Q", len(h)) + h + payload)
    with pytest.raises(Err, match="written by an older version of composition_jax .*format 1.*"
                                  "retrain"):
        training.load_checkpoint(tmp_path / "v1.ckpt", tree)
    _write_v2(tmp_path / "v.ckpt", tree)
    newer = dict(_split((tmp_path / "v.ckpt").read_bytes())[0], format_version=99)
    (tmp_path / "v99.ckpt").write_bytes(_forge(newer, _payload((tmp_path / "v.ckpt")
                                                               .read_bytes())))
    with pytest.raises(Err, match="written by a newer version .*format 99"):
        training.load_checkpoint(tmp_path / "v99.ckpt", tree)
    training.save_checkpoint(tmp_path / "v", tree)
    _edit_record(tmp_path / "v", 0, lambda r: r.update(format_version=99), rehash=True)
    with pytest.raises(Err, match="written by a newer version .*format 99.*upgrade"):
        training.load_checkpoint(tmp_path / "v", tree)


def test_cache_folder_is_per_user(monkeypatch, tmp_path):
    """The finding: the cache lived at a predictable path in the shared temporary folder."""
    monkeypatch.delenv("COMPOSITION_JAX_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    p = _common.cache_dir()
    assert p == tmp_path / "xdg" / "composition_jax"
    assert p.is_dir() and (p.stat().st_mode & 0o777) == 0o700
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    p = _common.cache_dir()
    assert p == tmp_path / "home" / ".cache" / "composition_jax"
    assert (p.stat().st_mode & 0o777) == 0o700
    monkeypatch.setenv("COMPOSITION_JAX_CACHE", str(tmp_path / "mine"))
    assert _common.cache_dir() == tmp_path / "mine"
    assert (_common.cache_dir().stat().st_mode & 0o777) == 0o700


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax's loop
def test_untrusted_cache_folder_is_ignored(trained, monkeypatch, tmp_path):
    """A self-consistent entry in a folder others can write (or another user owns) is not
    trusted: the model is retrained, with a warning, and nothing is written there."""
    tr, _ = trained
    args = (tr, jax.random.key(5), _DATA, 4, "t", {"x": 1})
    safe = _common.cache_dir(tmp_path / "safe")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a trusted folder: no warning
        first, info = _common.train_cached(*args, safe)
        again, info2 = _common.train_cached(*args, safe)
    assert not info["cached"] and info2["cached"]
    _leaves_equal(again, first)

    shared = tmp_path / "shared"
    shutil.copytree(safe, shared)
    os.chmod(shared, 0o777)
    with pytest.warns(UserWarning, match=r"ignoring the parameter cache .*shared: it is "
                                         r"writable by group and others"):
        _, info = _common.train_cached(*args, shared)
    assert not info["cached"] and "checkpoint" not in info

    os.chmod(shared, 0o700)
    uid = os.stat(shared).st_uid
    monkeypatch.setattr(os, "getuid", lambda: uid + 1)
    with pytest.warns(UserWarning, match=rf"owned by uid {uid}, not by the current user"):
        _, info = _common.train_cached(*args, shared)
    assert not info["cached"]
    monkeypatch.undo()

    # a damaged entry in a trusted folder: retrained and replaced, with a warning
    (entry,) = safe.glob("*.ckpt")
    (data_file,) = (entry / "4" / "state" / "d").iterdir()
    data_file.write_bytes(data_file.read_bytes()[:-1])
    with pytest.warns(UserWarning, match="cache entry .* not used .*corrupt"):
        _, info = _common.train_cached(*args, safe)
    assert not info["cached"]
    assert _common.train_cached(*args, safe)[1]["cached"]

    # an entry of format 2 (a single file) left by an earlier release is still served
    shutil.rmtree(entry)
    _write_v2(entry, first, {"step": 4, "trainer": tr.config()})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        old, info = _common.train_cached(*args, safe)
    assert info["cached"]
    _leaves_equal(old, first)
    gc.collect()  # orbax's abandoned coroutines are finalized here, under this test's filter
