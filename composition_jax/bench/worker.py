"""One measurement in a fresh process: ``python -m composition_jax.bench.worker '<json spec>'``.

A fresh process per (implementation, size) gives an honest first-call (compile) time, an
isolated peak-memory reading (``ru_maxrss``) and its own thread settings. Prints one JSON line.

Spec keys: impl, d, K, k, n, steps, method, repeats, seed, [budget_s], [devices],
[record_every]. ``composition_jax_sharded`` is composition_jax with the particles sharded over
``devices`` devices (``cj.particle_mesh``; on a CPU the harness exposes the cores as devices).

Timing: the first call (compilation for the JIT implementations) is reported separately; then
the full problem is timed ``repeats`` times, stopping early once ``budget_s`` seconds of timed
runs are spent (at least one), and the median is the steady state. Implementations without
compilation (NumPy, PyTorch eager) are warmed up on a 5-step copy of the problem instead, so
their first full call is already a steady-state sample.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time


def _summary(x):
    import numpy as np

    x = np.asarray(x, np.float64)
    out = {
        "mean": x.mean(0).tolist(),
        "var": x.var(0, ddof=1).tolist(),
        "finite": bool(np.all(np.isfinite(x))),
    }
    if x.shape[1] <= 8:
        out["cov"] = np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1]).tolist()
    return out


def run(spec: dict) -> dict:
    from .problem import flops_per_particle_step, make_problem

    p = make_problem(spec["d"], spec["K"], spec["k"], spec["n"], spec["steps"], seed=spec.get("problem_seed", 0))
    impl = spec["impl"]
    method = spec.get("method", "euler_maruyama")
    threads = None
    if impl.startswith("torch"):
        import torch

        threads = int(spec.get("threads", os.cpu_count() or 1))
        torch.set_num_threads(threads)
    from .impls import IMPLEMENTATIONS

    no_compile = impl in ("numpy", "numpy_loop", "torch", "torch_loop")
    if impl == "composition_jax_sharded" or (impl == "composition_jax" and spec.get("record_every")):
        go = _cj_special(p, spec)
    else:
        go = IMPLEMENTATIONS[impl](p, spec.get("seed", 0), method)
    if no_compile:  # warm caches/allocators on a 5-step copy: nothing to compile
        warm = make_problem(spec["d"], spec["K"], spec["k"], spec["n"], 5,
                            seed=spec.get("problem_seed", 0))
        IMPLEMENTATIONS[impl](warm, spec.get("seed", 0), method)()
    t0 = time.perf_counter()
    x = go()
    first = time.perf_counter() - t0
    times = [first] if no_compile else []
    budget = spec.get("budget_s", float("inf"))
    while len(times) < max(spec.get("repeats", 3), 1) and (not times or sum(times) < budget):
        t0 = time.perf_counter()
        x = go()
        times.append(time.perf_counter() - t0)
    steady = statistics.median(times)
    ps = p.n * p.steps
    return {
        "impl": impl,
        "method": method,
        "problem": p.name,
        "d": p.d, "K": p.K, "k": p.k, "n": p.n, "steps": p.steps,
        "devices": spec.get("devices", 1) if impl == "composition_jax_sharded" else 1,
        "record_every": spec.get("record_every"),
        "first_call_s": first,
        "compile_s": max(first - steady, 0.0),
        "steady_s": steady,
        "repeat_s": times,
        "particle_steps_per_s": ps / steady,
        "flops_per_particle_step": flops_per_particle_step(p, method),
        "normals_per_particle_step": p.d if method == "euler_maruyama" else 0,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "torch_threads": threads,
        "device": device_info(impl),
        "summary": _summary(x),
    }


def device_info(impl: str) -> dict:
    """Where ``impl`` ran: the JAX default device (platform, kind, count) for the JAX
    implementations, with the device's memory statistics where the backend reports them (GPU,
    TPU: ``peak_bytes_in_use``, ``bytes_limit``); the host CPU otherwise."""
    import platform

    if impl.startswith(("numpy", "torch")):
        return {"platform": "cpu", "device_kind": platform.processor() or platform.machine(),
                "device_count": 1}
    import jax

    dev = jax.local_devices()[0]
    info = {"platform": dev.platform, "device_kind": dev.device_kind,
            "device_count": jax.device_count(), "process_count": jax.process_count()}
    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    if stats:
        info["memory_stats"] = {k: stats[k] for k in ("peak_bytes_in_use", "bytes_in_use",
                                                      "bytes_limit") if k in stats}
    return info


def _cj_special(p, spec):
    """composition_jax with particles sharded over emulated devices and/or trajectory recording."""
    import jax
    import numpy as np

    import composition_jax as cj

    from .impls import build_cj_model
    from .problem import T_MIN

    model, sched = build_cj_model(p)
    key = jax.random.key(spec.get("seed", 0))
    kwargs = {}
    if spec["impl"] == "composition_jax_sharded":
        if jax.device_count() != spec.get("devices", 1):
            raise RuntimeError(f"asked for {spec.get('devices')} devices, JAX sees "
                               f"{jax.device_count()} (set XLA_FLAGS before the process starts)")
        kwargs["mesh"] = cj.particle_mesh()
    if spec.get("record_every"):
        kwargs["record_every"] = spec["record_every"]
        kwargs["return_info"] = True

    def go():
        out = cj.sample(key, model, sched, (p.n, p.d), method=spec.get("method", "euler_maruyama"),
                        steps=p.steps, t_min=T_MIN, denoise_final=False, **kwargs)
        out = jax.block_until_ready(out)
        x = out[0] if isinstance(out, tuple) else out
        return np.asarray(x)

    return go


def main() -> None:
    spec = json.loads(sys.argv[1])
    print("RESULT " + json.dumps(run(spec)), flush=True)


if __name__ == "__main__":
    main()
