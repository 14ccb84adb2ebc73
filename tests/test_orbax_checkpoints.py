"""Training checkpoints stored with orbax, with the integrity and configuration checks on top.

* a trained state round-trips bit for bit (parameters, EMA, optimizer state, step, typed key),
  and orbax's own ``StandardCheckpointer`` reads the arrays of the ``state`` item;
* typed PRNG keys of every implementation round-trip (stored as ``key_data``);
* a checkpoint of another architecture, schedule or data is refused, every differing field named;
* corrupting any file of a step (deleting, truncating, changing a byte) either raises
  ``CheckpointError`` or leaves what is loaded bit-identical (orbax keeps files that the restore
  does not read); the array data, the OCDBT manifest, the array metadata and the integrity record
  are always refused;
* saving the same step again replaces it (and a failed save puts the old one back); ``max_to_keep``;
  the asynchronous writer commits every step; loading writes nothing; a target's sharding is
  kept; a format-2 file still loads and is replaced by a directory on save.
"""

from __future__ import annotations

import gc
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_trust_checkpoints import _write_v2  # tests/ is on sys.path (pytest rootdir)

import composition_jax as cj
from composition_jax import nn, training
from composition_jax.training import checkpoint as ckpt

Err = training.CheckpointError
_DATA = np.random.default_rng(1).normal(size=(32, 2)).astype(np.float32)


def _trainer(net=None, schedule=None, **kw):
    kw = {"batch_size": 8, "steps_per_call": 4, **kw}
    return training.DSMTrainer(net or nn.MLPScoreNet(dim=2, hidden=4, depth=0),
                               schedule or cj.VPSchedule(), **kw)


def _assert_states_equal(a, b):
    """Bit-identical pytrees; typed keys compared through their implementation and key data."""
    is_key = lambda x: jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert is_key(x) == is_key(y)
        if is_key(x):
            assert jax.random.key_impl(x) == jax.random.key_impl(y)
    plain = lambda t: jax.tree.map(lambda x: jax.random.key_data(x) if is_key(x) else x, t)
    chex.assert_trees_all_equal(plain(a), plain(b))
    chex.assert_trees_all_equal_dtypes(plain(a), plain(b))


@pytest.fixture(scope="module")
def trained():
    tr = _trainer()
    with jax.numpy_rank_promotion("raise"), jax.numpy_dtype_promotion("strict"):
        state, _ = tr.train(tr.init(jax.random.key(3)), _DATA, 6, progress=False)
    return tr, state


def test_trained_model_round_trips_bit_for_bit(trained, tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    tr, state = trained
    path = tmp_path / "run"
    tr.save(path, state, data=_DATA)
    restored = _trainer().restore(path, data=_DATA)  # a fresh trainer of the same configuration
    _assert_states_equal(restored, state)
    chex.assert_trees_all_equal(restored.params, state.params)
    chex.assert_trees_all_equal(restored.opt_state, state.opt_state)
    # the layout flax users expect: the state item is a plain orbax StandardSave pytree
    raw = ocp.StandardCheckpointer().restore(path / "6" / "state")
    chex.assert_trees_all_equal(raw["params"], state.params)
    chex.assert_trees_all_equal(raw["ema_params"], state.ema_params)
    np.testing.assert_array_equal(raw["key"], jax.random.key_data(state.key))
    assert int(raw["step"]) == 6
    # and the trained model evaluates identically
    x, t = jnp.array([0.3, -0.2], jnp.float32), jnp.float32(0.5)
    np.testing.assert_array_equal(tr.model(restored).score(x, t), tr.model(state).score(x, t))


def test_typed_keys_of_every_implementation_round_trip(tmp_path):
    tree = {impl: jax.random.split(jax.random.key(7, impl=impl), 3)
            for impl in ("threefry2x32", "rbg", "unsafe_rbg")}
    training.save_checkpoint(tmp_path / "k", tree, step=1)
    back, _ = training.load_checkpoint(tmp_path / "k", jax.eval_shape(lambda: tree))
    _assert_states_equal(back, tree)
    assert training.read_checkpoint_header(tmp_path / "k")["key_impls"] == {
        "rbg": "rbg", "threefry2x32": "threefry2x32", "unsafe_rbg": "unsafe_rbg"}
    swapped = {**tree, "rbg": jax.random.split(jax.random.key(7), 3)}
    with pytest.raises(Err, match=r"leaf rbg: dtype key<rbg> in file, key<fry> expected"):
        training.load_checkpoint(tmp_path / "k", jax.eval_shape(lambda: swapped))


def test_mismatched_configuration_is_refused_naming_every_field(trained, tmp_path):
    tr, state = trained
    path = tmp_path / "run"
    tr.save(path, state, data=_DATA)
    other = _trainer(net=nn.MLPScoreNet(dim=2, hidden=8, depth=0),
                     schedule=cj.VESchedule(sigma_max=20.0))
    with pytest.raises(Err) as info:
        other.restore(path, data=_DATA[:16])
    msg = str(info.value)
    assert "does not match this trainer in schedule, network, data: " in msg
    for expected in [
        ("checkpoint schedule VPSchedule(beta_min=0.1, beta_max=20.0, t_max=1.0) != trainer's "
         "VESchedule(sigma_min=0.01, sigma_max=20.0, t_max=1.0)"),
        ("checkpoint network MLPScoreNet(dim=2, hidden=4, depth=0, num_conditions=None) != "
         "trainer's MLPScoreNet(dim=2, hidden=8, depth=0, num_conditions=None)"),
        "checkpoint data array(shape=(32, 2), dtype='float32', sha256=",
        "!= trainer's array(shape=(16, 2), dtype='float32', sha256=",
    ]:
        assert expected in msg, msg
    # the same data in another order is other data; the data of a Distribution is its law
    with pytest.raises(Err, match=r"does not match this trainer in data: "):
        tr.restore(path, data=_DATA[::-1])
    g = cj.Gaussian(jnp.zeros(2), jnp.eye(2))
    tr.save(tmp_path / "g", state, data=g)
    tr.restore(tmp_path / "g", data=cj.Gaussian(jnp.zeros(2), jnp.eye(2)))
    with pytest.raises(Err, match=r"checkpoint data Gaussian\(dim=2, sha256="):
        tr.restore(tmp_path / "g", data=cj.Gaussian(jnp.zeros(2), 2.0 * jnp.eye(2)))
    with pytest.raises(Err, match=r"records no training data \(saved without data=\)"):
        tr.save(tmp_path / "nodata", state)
        tr.restore(tmp_path / "nodata", data=_DATA)
    # another tree structure: refused by leaf name before any array is read
    target = {"params": state.params, "step": state.step}
    with pytest.raises(Err, match=r"step 6 does not match the target: leaf ema_params/\S+ in "
                                  r"file is not in the target \(\d+ extra leaves\)"):
        training.load_checkpoint(path, target)


def _flip(i):
    return lambda b: b[:i] + bytes([b[i] ^ 0x01]) + b[i + 1:] if i < len(b) else b


def _corruption_sweep(tmp_path, edits):
    """Apply every ``(name, edit(size) -> (bytes -> bytes) or None for deletion)`` to every file
    of a saved step, one at a time: the load raises ``CheckpointError`` or returns bit-identical
    arrays and metadata, never another exception and never other values. Returns
    ``{(file, name): "refused" | "harmless"}`` and the files that must always be refused."""
    tree = {"w": jnp.arange(6.0, dtype=jnp.float32).reshape(2, 3), "s": jnp.int32(7),
            "k": jax.random.key(2)}
    base = tmp_path / "base"
    training.save_checkpoint(base, tree, {"note": "x"}, step=1)
    target = jax.eval_shape(lambda: tree)
    files = sorted(q.relative_to(base) for q in base.rglob("*") if q.is_file())
    always_refused = {q for q in files if q.parts[1:3] == ("state", "d")} | {
        q for q in files if q.parts[1:] in (("state", "manifest.ocdbt"), ("state", "_METADATA"),
                                             ("meta", "metadata"))}
    assert len(always_refused) == 4, files
    outcomes = {}
    for rel in files:
        size = (base / rel).stat().st_size
        for what, make in edits:
            work = tmp_path / "work"
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(base, work)
            edit = make(size)
            if edit is None:
                (work / rel).unlink()
            else:
                (work / rel).write_bytes(edit((work / rel).read_bytes()))
            try:
                back, meta = training.load_checkpoint(work, target)
            except Err:
                outcomes[rel, what] = "refused"
                continue
            except Exception as e:  # noqa: BLE001 - any other exception is the failure under test
                pytest.fail(f"{rel} {what}: {type(e).__name__} leaked: {e}")
            _assert_states_equal(back, tree)
            assert meta == {"note": "x"}
            outcomes[rel, what] = "harmless"
    gc.collect()  # orbax's abandoned coroutines are finalized here, under this test's filter
    return outcomes, always_refused


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax's loop
def test_every_file_corruption_is_refused_or_harmless(tmp_path):
    """Each file of a step directory deleted, truncated to half, or with its middle byte
    flipped; the array data, manifest, array metadata and integrity record always refused."""
    edits = [("deleted", lambda n: None), ("halved", lambda n: lambda b: b[: n // 2]),
             ("flipped", lambda n: _flip(n // 2))]
    outcomes, always = _corruption_sweep(tmp_path, edits)
    for rel in always:
        for what, _ in edits:
            assert outcomes[rel, what] == "refused", (rel, what)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_file_corruption_sweep_dense(tmp_path):
    """As above with 16 truncation lengths and 16 flipped bytes (two bit positions) per file."""
    edits = [("deleted", lambda n: None)]
    for j in range(16):
        edits.append((f"cut{j}", lambda n, j=j: lambda b: b[: j * n // 16]))
        for bit in (0x01, 0x80):
            edits.append((f"flip{j}^{bit:#x}",
                          lambda n, j=j, bit=bit: lambda b, i=j * n // 16: b[:i] + bytes(
                              [b[i] ^ bit]) + b[i + 1:] if i < len(b) else b))
    outcomes, always = _corruption_sweep(tmp_path, edits)
    assert all(outcomes[rel, "deleted"] == "refused" for rel in always)
    assert all(outcomes[rel, f"cut{j}"] == "refused" for rel in always for j in range(16))


def test_sharded_target_restores_with_its_sharding(tmp_path):
    """A target leaf's sharding is the restored array's (one CPU device here)."""
    mesh = jax.make_mesh((1,), ("x",), axis_types=(jax.sharding.AxisType.Auto,))
    sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("x"))
    tree = {"w": jax.device_put(jnp.arange(4.0, dtype=jnp.float32), sh)}
    training.save_checkpoint(tmp_path / "s", tree)
    back, _ = training.load_checkpoint(
        tmp_path / "s", {"w": jax.ShapeDtypeStruct((4,), jnp.float32, sharding=sh)})
    assert back["w"].sharding == sh
    chex.assert_trees_all_equal(back, tree)


def _boom(_):
    raise RuntimeError("disk full")


def test_same_step_is_replaced_and_max_to_keep(tmp_path, monkeypatch):
    path = tmp_path / "r"
    for s in (1, 2, 3):
        training.save_checkpoint(path, {"w": jnp.full((2,), float(s))}, step=s, max_to_keep=2)
    assert training.checkpoint_steps(path) == [2, 3]
    target = {"w": jax.ShapeDtypeStruct((2,), jnp.float32)}
    training.save_checkpoint(path, {"w": jnp.full((2,), 30.0)}, step=3)
    np.testing.assert_array_equal(training.load_checkpoint(path, target)[0]["w"], [30.0, 30.0])
    np.testing.assert_array_equal(training.load_checkpoint(path, target, step=2)[0]["w"],
                                  [2.0, 2.0])
    # a save that fails midway puts the replaced step back
    monkeypatch.setattr(ckpt, "_nest", _boom)
    with pytest.raises(RuntimeError, match="disk full"):
        training.save_checkpoint(path, {"w": jnp.full((2,), 99.0)}, step=3)
    monkeypatch.undo()
    np.testing.assert_array_equal(training.load_checkpoint(path, target)[0]["w"], [30.0, 30.0])
    assert sorted(q.name for q in path.iterdir()) == ["2", "3"]
    with pytest.raises(ValueError, match="step must be a non-negative int"):
        training.save_checkpoint(path, {"w": jnp.zeros(2)}, step=-1)
    with pytest.raises(ValueError, match="tree has no array leaves"):
        training.save_checkpoint(path, {"w": {}}, step=4)
    with pytest.raises(ValueError, match="tree must be a container of arrays"):
        training.save_checkpoint(path, jnp.zeros(2), step=4)
    with pytest.raises(ValueError, match="metadata must be JSON-serializable"):
        training.save_checkpoint(path, {"w": jnp.zeros(2)}, {"f": object()}, step=4)
    assert training.checkpoint_steps(path) == [2, 3]


def test_async_writer_commits_every_step(tmp_path):
    """Steps started in the background are all committed by the end of the ``with`` block,
    each bit-identical to what was passed; re-saving a pending step replaces it."""
    trees = [{"w": jnp.full((3,), float(s), jnp.float32), "k": jax.random.key(s)}
             for s in range(4)]
    with training.CheckpointWriter(tmp_path / "a", max_to_keep=3) as w:
        for s, t in enumerate(trees):
            w.save(t, {"s": s}, step=s)
        w.save(trees[0], {"s": "again"}, step=3)  # step 3 may still be in flight
    assert training.checkpoint_steps(tmp_path / "a") == [1, 2, 3]
    target = jax.eval_shape(lambda: trees[0])
    for s in (1, 2):
        back, meta = training.load_checkpoint(tmp_path / "a", target, step=s)
        _assert_states_equal(back, trees[s])
        assert meta == {"s": s}
    back, meta = training.load_checkpoint(tmp_path / "a", target)
    _assert_states_equal(back, trees[0])
    assert meta == {"s": "again"}
    assert sorted(q.name for q in (tmp_path / "a").iterdir()) == ["1", "2", "3"]


def test_loading_writes_nothing(trained, tmp_path):
    tr, state = trained
    path = tmp_path / "ro"
    tr.save(path, state)

    def snapshot():
        return {q.relative_to(path): (q.is_dir(), q.stat().st_mtime_ns, q.stat().st_size)
                for q in path.rglob("*")}

    before = snapshot()
    tr.restore(path)
    training.read_checkpoint_header(path)
    assert training.checkpoint_steps(path) == [6]
    assert snapshot() == before


def test_format2_file_still_loads_and_is_replaced_on_save(trained, tmp_path, monkeypatch):
    tr, state = trained
    old = tmp_path / "old.ckpt"
    _write_v2(old, state, {"step": 6, "trainer": tr.config()})
    _assert_states_equal(tr.restore(old), state)
    assert training.checkpoint_steps(old) == [6]
    assert training.read_checkpoint_header(old)["format_version"] == 2
    blob = old.read_bytes()
    monkeypatch.setattr(ckpt, "_nest", _boom)  # a failed save puts the file back
    with pytest.raises(RuntimeError, match="disk full"):
        tr.save(old, state)
    monkeypatch.undo()
    assert old.read_bytes() == blob and sorted(q.name for q in tmp_path.iterdir()) == ["old.ckpt"]
    tr.save(old, state)  # the file becomes a checkpoint directory
    assert old.is_dir() and training.checkpoint_steps(old) == [6]
    _assert_states_equal(tr.restore(old), state)
    other = tmp_path / "notes.txt"
    other.write_text("not a checkpoint")
    with pytest.raises(Err, match="is a file that is not a composition_jax checkpoint; refusing"):
        tr.save(other, state)
    assert other.read_text() == "not a checkpoint"
