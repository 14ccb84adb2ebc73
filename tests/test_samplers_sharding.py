"""Particles sharded over 8 emulated CPU devices: same samples as unsharded (and as a smaller
unsharded batch), no gather."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    import composition_jax as cj
    assert len(jax.devices()) == 8, jax.devices()
    sch = cj.VPSchedule()
    p = cj.diffuse(cj.Gaussian(jnp.array([1.0, -1.0]), jnp.array([[2.0, 0.5], [0.5, 1.0]])), sch)
    mesh = jax.make_mesh((8,), ("batch",))  # Explicit axes by default: the driver copes
    key = jax.random.key(0)
    # annealed MALA: pre-drawn normals AND uniforms, and the replicated pilot ensemble. One
    # compiled sharded run gives both the samples and the partitioned HLO; particles 0..6 must
    # equal an unsharded run of 7 particles (batch independence and sharding at once).
    kw = dict(method="annealed_mala", steps=4)
    run = jax.jit(lambda k: cj.sample(k, p, sch, (64, 2), mesh=mesh, **kw)).lower(key).compile()
    a = run(key)
    b = cj.sample(key, p, sch, (7, 2), **kw)
    np.testing.assert_allclose(np.asarray(a)[:7], np.asarray(b), rtol=1e-5, atol=1e-6)
    assert len(a.sharding.device_set) == 8, a.sharding
    assert a.sharding.shard_shape(a.shape) == (8, 2), a.sharding
    assert "all-gather" not in run.as_text()
    # the convenience mesh over all devices, with the default sampler
    m2 = cj.particle_mesh()
    assert m2.axis_names == ("batch",) and m2.devices.size == 8
    c = cj.sample(key, p, sch, (40, 2), steps=5, mesh=m2)
    np.testing.assert_allclose(np.asarray(c)[:7], np.asarray(cj.sample(key, p, sch, (7, 2), steps=5)),
                               rtol=1e-5, atol=1e-6)
    assert len(c.sharding.device_set) == 8, c.sharding
    # the particle-minor layout (shard_map over tiles): same particles as unsharded rows
    mix = cj.GaussianMixture(jnp.array([0.4, 0.6]), jnp.array([[1.0, 0.0], [-1.0, 0.5]]),
                             jnp.array([0.3, 0.5])[:, None, None] * jnp.eye(2)[None])
    q = cj.compose(cj.diffuse(mix, sch), [cj.diffuse(mix, sch)])
    e = cj.sample(key, q, sch, (44, 2), steps=5, mesh=m2, layout="columns")
    f = cj.sample(key, q, sch, (44, 2), steps=5, layout="rows")
    np.testing.assert_allclose(np.asarray(e), np.asarray(f), rtol=1e-4, atol=2e-5)
    assert len(e.sharding.device_set) == 8, e.sharding
    # three tiles per device (tile_size 2 for 6 particles a device, tiles rounded up to 8: a
    # different padding and placement): the same particles, bit for bit
    g = cj.sample(key, q, sch, (44, 2), steps=5, mesh=m2, layout="columns", tile_size=2)
    np.testing.assert_array_equal(np.asarray(g), np.asarray(e))
    print("SHARDED_OK")
    """
)


def test_sharded_equals_unsharded_on_8_devices():
    env = dict(os.environ)
    # LLVM optimization level 0 halves the compile time; sharding (the SPMD partitioner, which
    # decides the all-gathers) and the sampled numbers do not depend on it
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
                        " --xla_backend_optimization_level=0")
    env["JAX_PLATFORMS"] = "cpu"
    r = subprocess.run([sys.executable, "-c", SCRIPT], check=False, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "SHARDED_OK" in r.stdout
