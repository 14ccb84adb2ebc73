"""``cj.sample`` on JAX's multi-controller runtime: two local processes (``jax.distributed``,
CPU devices, loopback coordinator, gloo collectives) sample over one global mesh and return the
same particles as one process.

Three subprocesses, each with two CPU devices in all:

* ``single``: one process, two devices (``--xla_force_host_platform_device_count=2``): the run
  over the 2-device mesh, and the unsharded run on one device;
* ``dist 0``, ``dist 1``: two processes, one CPU device each, joined by
  ``jax.distributed.initialize``; the same call over the global 2-device mesh, gathered with
  ``multihost_utils.process_allgather``.

The per-device program of the distributed run is the one of the single-process 2-device run
(same mesh shape, same shard of particles per device, same counter-based noise per particle), so
the two are compared BITWISE. The unsharded run uses other array shapes for the same particles
(one device holds them all: other tile sizes in the particle-minor layout, other matmul
blocking), so it is compared within a few float32 ulps (``toolchain-notes``: sharded and
unsharded agree to about 1 ulp). Cases: the default sampler on a composed mixture (particle-minor
tiles in a ``shard_map``) and annealed MALA (rows layout, the replicated pilot ensemble, uniform
draws) on a Gaussian composition.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    mode, out, names = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
    import jax
    if mode == "dist":
        port, pid = int(sys.argv[4]), int(sys.argv[5])
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                                   process_id=pid, initialization_timeout=120)
    import jax.numpy as jnp
    from jax.experimental import multihost_utils
    import composition_jax as cj

    assert jax.device_count() == 2, jax.devices()
    sch = cj.VPSchedule()
    mix = cj.GaussianMixture(jnp.array([0.3, 0.7]), jnp.array([[1.0, -0.5], [-1.5, 0.5]]),
                             jnp.array([0.4, 0.2])[:, None, None] * jnp.eye(2)[None])
    bg = cj.GaussianMixture(jnp.array([0.5, 0.5]), jnp.array([[0.0, 1.0], [0.5, -1.0]]),
                            jnp.array([1.5, 1.0])[:, None, None] * jnp.eye(2)[None])
    composed_mix = cj.compose(cj.diffuse(bg, sch), [cj.diffuse(mix, sch)])
    g = lambda m, c: cj.diffuse(cj.Gaussian(jnp.asarray(m), jnp.asarray(c)), sch)
    composed_gauss = cj.compose(g([0.0, 0.0], 3.0 * jnp.eye(2)),
                                [g([1.0, 0.0], [[1.0, 0.3], [0.3, 1.0]])])
    cases = {
        "euler_maruyama": (composed_mix, dict(steps=12)),
        "annealed_mala": (composed_gauss, dict(method="annealed_mala", steps=4, n_pilot=64)),
    }
    key = jax.random.key(20240611)
    mesh = cj.particle_mesh()  # all devices of all processes
    res = {"process_count": jax.process_count(), "devices": [str(d) for d in jax.devices()]}
    for name in names:
        model, kw = cases[name]
        x = cj.sample(key, model, sch, (50, 2), mesh=mesh, **kw)
        res[name + "/shards"] = sorted(
            (s.index[0].start or 0, s.device.process_index) for s in x.addressable_shards)
        if mode == "dist":
            x = multihost_utils.process_allgather(x, tiled=True)
        res[name] = np.asarray(x).tolist()
        if mode == "single":
            res[name + "/unsharded"] = np.asarray(cj.sample(key, model, sch, (50, 2), **kw)).tolist()
    with open(out, "w") as f:
        json.dump(res, f)
    if mode == "dist":
        jax.distributed.shutdown()
    """
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ulps(a: np.ndarray, b: np.ndarray) -> int:
    """Largest distance in float32 units in the last place (ordered integer representation)."""
    def ordered(x):
        i = np.asarray(x, np.float32).view(np.int32).astype(np.int64)
        return np.where(i < 0, -(i & 0x7FFFFFFF), i)
    return int(np.max(np.abs(ordered(a) - ordered(b))))


# Compiler settings the test suite may set for speed (Makefile): the bitwise claim is about the
# settings users run with, so the three processes compile without them (at optimization level
# 0 with XLA:CPU's loop emitters, the two programs round differently).
_SUITE_ONLY_FLAGS = ("--xla_cpu_use_fusion_emitters", "--xla_backend_optimization_level",
                     "--xla_llvm_disable_expensive_passes")


def _user_xla_flags(flags: str) -> str:
    return " ".join(f for f in flags.split() if not f.startswith(_SUITE_ONLY_FLAGS))


def _run_three(tmp, cases):
    """The single-process run and the two distributed processes, concurrently."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("JAX_ENABLE_X64", None)
    env["XLA_FLAGS"] = _user_xla_flags(env.get("XLA_FLAGS", ""))
    single_env = dict(env, XLA_FLAGS=env["XLA_FLAGS"] + " --xla_force_host_platform_device_count=2")
    port = _free_port()
    cmd = [sys.executable, "-c", SCRIPT]
    names = ",".join(cases)
    procs = [subprocess.Popen(cmd + ["single", str(tmp / "single.json"), names], env=single_env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    procs += [subprocess.Popen(cmd + ["dist", str(tmp / f"dist{i}.json"), names, str(port), str(i)],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for i in (0, 1)]
    errs = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
        errs.append((p.returncode, err[-3000:]))
    assert all(rc == 0 for rc, _ in errs), errs
    return {name: json.loads((tmp / f"{name}.json").read_text())
            for name in ("single", "dist0", "dist1")}


def _check(runs, case):
    # one runtime: two processes, two global devices, each process holding exactly the particles
    # of its own device (rows 0..24 and 25..49)
    assert runs["single"]["process_count"] == 1
    for i in (0, 1):
        r = runs[f"dist{i}"]
        assert r["process_count"] == 2 and len(r["devices"]) == 2
        assert [tuple(s) for s in r[case + "/shards"]] == [(25 * i, i)], r[case + "/shards"]
    single = np.asarray(runs["single"][case], np.float32)
    assert single.shape == (50, 2) and np.all(np.isfinite(single))
    for i in (0, 1):  # every process gathers the same global array, bit for bit
        dist = np.asarray(runs[f"dist{i}"][case], np.float32)
        assert _ulps(dist, single) == 0, f"process {i}: {_ulps(dist, single)} ulp"
    # the unsharded run of the same key: measured bitwise equal for both cases (the per-particle
    # arithmetic does not depend on how many particles a device holds here); a model whose
    # score is a large matmul may differ by ~1 ulp there (other blocking), not here
    unsharded = np.asarray(runs["single"][case + "/unsharded"], np.float32)
    assert _ulps(single, unsharded) == 0, f"sharded vs unsharded: {_ulps(single, unsharded)} ulp"


def test_two_processes_equal_one_process_bitwise(tmp_path):
    """Default sampler (Euler-Maruyama) on a composed mixture: the particle-minor layout, tiles
    in a ``shard_map`` over the global mesh."""
    _check(_run_three(tmp_path, ["euler_maruyama"]), "euler_maruyama")


@pytest.mark.slow
def test_two_processes_equal_one_process_bitwise_annealed_mala(tmp_path):
    """Annealed MALA: rows layout, pre-drawn normals and uniforms, the pilot ensemble replicated
    on every device of both processes."""
    _check(_run_three(tmp_path, ["annealed_mala"]), "annealed_mala")
