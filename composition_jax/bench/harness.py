"""``composition-jax bench``: side-by-side speed, scaling and the roofline, in one run.

Every measurement runs in a fresh subprocess (see ``worker.py``). Results: ``results.json`` (one
record per (implementation, problem, size), with the machine and versions), PNG plots, and a
printed table of ratios to composition_jax. Implementations are checked to give the same law:
their sample means agree with composition_jax's within a Bonferroni-corrected z-test derived
from ``n``.

Output writing: :func:`run_bench` writes into the folder it is given (the command line gives it
a staging folder, see :mod:`composition_jax._outputs`, and moves the outputs into ``--out`` at
the end). ``results.json`` is rewritten atomically after every measurement with
``"complete": false`` and a last time with ``"complete": true``; files get the user's umask.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .impls import LOOP_VERSIONS, available, wide_options
from .problem import QUICK_SIZES, SIZES

__all__ = ["OUTPUTS", "agreement", "failures", "measure_ceilings", "ratio_table", "run_backend",
           "run_bench"]

#: every file a run may write into its folder (``results.json`` is the completion marker)
OUTPUTS = ("results.json", "table.md", "scaling.png", "memory.png", "compare.png")


#: How every worker starts, recorded in ``results.json`` (``environment["first_call"]``).
FIRST_CALL = ("cold: each worker runs without JAX's persistent compilation cache "
              "(JAX_COMPILATION_CACHE_DIR removed) and with an empty TorchInductor cache, so a "
              "first call is trace + compile for every implementation, on every rerun")


def _worker_env(env_extra: dict | None, inductor_dir: str) -> dict:
    """The worker's environment: ours, without JAX's persistent compilation cache (a rerun would
    otherwise time cache hits as JAX's first calls while torch.compile compiles), with a fresh
    TorchInductor cache folder, single-threaded BLAS unless set, then ``env_extra``."""
    env = dict(os.environ)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env["TORCHINDUCTOR_CACHE_DIR"] = inductor_dir
    env.setdefault("OPENBLAS_NUM_THREADS", "1")  # BLAS threads slowed batched NumPy here
    if env_extra:
        env.update(env_extra)
    return env


def _worker(spec: dict, env_extra: dict | None = None, timeout: float = 3600) -> dict:
    cmd = [sys.executable, "-m", "composition_jax.bench.worker", json.dumps(spec)]
    with tempfile.TemporaryDirectory(prefix="cj-bench-inductor-") as inductor:
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              env=_worker_env(env_extra, inductor), timeout=timeout, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    return {**spec, "error": (proc.stderr or proc.stdout)[-2000:]}


def measure_ceilings(quick: bool = False) -> dict:
    """This machine's ceilings, measured in the same run: float32 matmul FLOP/s (XLA's dot, all
    threads), standard-normal generation rate (the best of ``jax.random.normal`` and the
    samplers' own counter-based generator, one device, each consumed by an update of a
    cache-sized state as a sampler step consumes it), memory bandwidth (a streaming
    ``x * a + b``, read + write, of ``8 m`` bytes; ``bandwidth_by_working_set``: the same for
    smaller working sets, ``[bytes, B/s]``). The generators and the stream are compiled with
    XLA's defaults and with each set of options ``cj.sample`` uses on this backend (``*_wide``
    entries: on CPU, 512-bit vectors; ``*_columns``: the columns layout's, also without
    YNNPACK fusions); the ceiling is the fastest, so that the roofline is never the sampler's
    own compiler setting."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from ..samplers import noise

    variants = {"": None, "_wide": wide_options(), "_columns": wide_options("columns", 64)}

    def jit_all(fn):  # {suffix: fn compiled with XLA's defaults or one of cj.sample's options}
        return {k: jax.jit(fn, compiler_options=o) for k, o in variants.items()}

    def best(fn, *args, reps=5):
        jax.block_until_ready(fn(*args))
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            ts.append(time.perf_counter() - t0)
        return min(ts)

    n = 1024 if quick else 2048
    a = jnp.ones((n, n), jnp.float32)
    mm = jax.jit(lambda x: x @ x)
    flops = 2 * n**3 / best(mm, a)
    m = 1 << (22 if quick else 24)
    # normals as a sampler consumes them: drawn into a cache-sized (4096, 64) state, x <- 0.999
    # x + z, in a loop of m / 2^18 draws (generating m normals into memory instead measures the
    # page faults and stores of the output, 1.5x slower here than the fused use)
    rows, draws = 4096, m // (1 << 18)

    def consumed(draw):
        def run(key):
            def body(i, x):
                return x * 0.999 + draw(jax.random.fold_in(key, i))
            return jax.lax.fori_loop(0, draws, body, jnp.zeros((rows, 64), jnp.float32))
        return run

    rates = {}
    for name, draw in (
            ("normals_per_s_jax_random", lambda k: jax.random.normal(k, (rows, 64))),
            ("normals_per_s_cj_noise", lambda k: noise.normals(k, rows, (64,), jnp.float32))):
        for suffix, fn in jit_all(consumed(draw)).items():
            rates[name + suffix] = m / best(fn, jax.random.key(0))
    normals = max(rates.values())
    # a streaming x * a + b (read + write), repeated in one program (>= 4 m floats of traffic,
    # one output allocation), over working sets from 128 KiB to 8 m bytes: a state that fits in
    # a cache streams at that cache's bandwidth
    by_size = []
    for size in sorted({s for s in (1 << 14, 1 << 16, 1 << 18, 1 << 20, 1 << 22) if s < m}
                       | {m}):
        reps = max(4, 4 * m // size)

        def stream(x, reps=reps):
            return jax.lax.fori_loop(0, reps, lambda i, y: y * 1.0001 + 1.0, x)

        t = min(best(f, jnp.ones((size,), jnp.float32), reps=3)
                for f in jit_all(stream).values())
        by_size.append([2 * 4 * size, 2 * 4 * size * reps / t])
    bw = by_size[-1][1]
    arr = np.ones(m, np.float32)
    out = np.empty_like(arr)
    t0 = time.perf_counter()
    for _ in range(5):
        np.multiply(arr, 1.0001, out=out)
    np_bw = 5 * 2 * 4 * m / (time.perf_counter() - t0)
    return {
        "matmul_flops_per_s": flops,
        **rates,
        "normals_per_s": normals,
        "bandwidth_bytes_per_s": bw,
        "bandwidth_by_working_set": by_size,
        "numpy_bandwidth_bytes_per_s": np_bw,
    }


def _z_threshold(d: int, alpha: float = 1e-3) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(1 - alpha / (2 * d))


def agreement(ref: dict, other: dict) -> dict:
    """Bonferroni z-test of per-coordinate means between two implementations' samples."""
    n1, n2 = ref["n"], other["n"]
    m1, v1 = ref["summary"]["mean"], ref["summary"]["var"]
    m2, v2 = other["summary"]["mean"], other["summary"]["var"]
    z = max(abs(a - b) / math.sqrt(va / n1 + vb / n2 + 1e-30) for a, b, va, vb in zip(m1, m2, v1, v2))
    vr = max(abs(math.log(vb / va)) for va, vb in zip(v1, v2) if va > 0 and vb > 0)
    thr = _z_threshold(len(m1))
    return {"max_mean_z": z, "z_threshold": thr, "max_abs_log_var_ratio": vr,
            "agree": bool(z < thr and other["summary"]["finite"])}


def _bandwidth(ceil: dict, working_set: int) -> float:
    """Streaming bandwidth for ``working_set`` bytes: of the smallest measured stream at least
    that large (``bandwidth_by_working_set``), else the largest (DRAM) one."""
    for size, rate in ceil.get("bandwidth_by_working_set", []):
        if size >= working_set:
            return rate
    return ceil["bandwidth_bytes_per_s"]


def _roofline(rec: dict, ceil: dict) -> dict:
    """Achieved fraction of the machine's limits for one record.

    Per particle-step: ``t_flop = flops / matmul FLOP/s``, ``t_rng = normals / normal rate``,
    ``t_mem = bytes / bandwidth`` (read x, write x, read noise, one temporary: ``16 d`` bytes),
    the bandwidth measured for a working set of the step's ``16 d n`` bytes (the smallest
    measured stream at least that large: a state that stays in a cache is read at the cache's
    bandwidth, not DRAM's, which would put the run above its "ceiling").
    ``binding`` is the largest of the three (the roofline: a perfect implementation that
    overlaps everything is limited by it); ``fraction_of_ceiling = floor / achieved time``.
    Since the matmuls and the noise run on the same cores, ``fraction_of_additive_bound`` uses
    ``t_flop + t_rng + t_mem`` (a perfect implementation that does not overlap them)."""
    ps = rec["particle_steps_per_s"]
    d = rec["d"]
    t_flop = rec["flops_per_particle_step"] / ceil["matmul_flops_per_s"]
    t_rng = rec["normals_per_particle_step"] / ceil["normals_per_s"]
    t_mem = (4 * 4 * d) / _bandwidth(ceil, 4 * 4 * d * rec.get("n", 0))
    floor = max(t_flop, t_rng, t_mem)
    binding = ["matmul_flops", "normal_samples", "memory_bandwidth"][[t_flop, t_rng, t_mem].index(floor)]
    return {"binding_ceiling": binding, "floor_particle_steps_per_s": 1 / floor,
            "fraction_of_ceiling": ps * floor,
            "fraction_of_additive_bound": ps * (t_flop + t_rng + t_mem),
            "fraction_matmul": ps * t_flop, "fraction_normals": ps * t_rng,
            "fraction_bandwidth": ps * t_mem}


def environment() -> dict:
    import jax
    import numpy as np

    env = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "numpy": np.__version__,
        "devices": [str(d) for d in jax.devices()],
        "first_call": FIRST_CALL,
        # this process's own setting (the backend-only mode times its first calls here: with a
        # folder set they may be cache hits)
        "jax_compilation_cache": jax.config.jax_compilation_cache_dir or None,
    }
    for mod in ("diffrax", "torch"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - optional
            env[mod] = None
    return env


CJ_IMPLS = ("composition_jax", "composition_jax_sharded")
DEFAULT_IMPLS = ["composition_jax", "composition_jax_sharded", "composition_jax_fullcov",
                 "jax_scan", "jax_scan_wide", "numpy", "diffrax", "diffrax_wide", "torch",
                 "torch_compile"]


def _cj_devices() -> int:
    """Devices for ``composition_jax_sharded``: one per CPU core (``--xla_force_host_platform_
    device_count``), at least 2 so that the sharded path is exercised."""
    return max(2, os.cpu_count() or 1)


def run_bench(out_dir: str | Path, quick: bool = False, impls: list[str] | None = None,
              progress=print, *, sizes: list[dict] | None = None, ks: tuple | None = None,
              steps: int | None = None, repeats: int | None = None, scaling: bool = True,
              methods: tuple = ("euler_maruyama", "ode_heun"), budget_s: float | None = None,
              loops: bool | None = None) -> dict:
    """Run the suite and write ``results.json``, ``table.md`` and plots into ``out_dir``.

    ``results.json`` is rewritten after every measurement (``"complete": false``), so an
    interrupted run keeps what it measured; the last write has ``"complete": true``. ``sizes``/``ks``/``steps``/``repeats``/``scaling``/``methods``/``budget_s``
    override the standard (or ``quick``) configuration, e.g. for a tiny end-to-end test.
    ``loops`` (default: on in full runs): each peer next to its straightforward version
    (:data:`~.impls.LOOP_VERSIONS`) on the first size, k = 1, Euler-Maruyama, recorded with
    ``ratio_peer_over_loop`` (group ``"loop"``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    impls = [i for i in (impls or DEFAULT_IMPLS) if available(i)]
    steps = steps or (100 if quick else 500)
    repeats = repeats or (2 if quick else 3)
    budget_s = budget_s if budget_s is not None else (5.0 if quick else 20.0)
    sizes = sizes or (QUICK_SIZES if quick else SIZES)
    ks = ks or ((1,) if quick else (1, 2, 4))
    if quick:  # under 3 minutes: the "before" path only in full runs
        impls = [i for i in impls if i != "composition_jax_fullcov"]
    ndev = _cj_devices()
    records: list[dict] = []
    env = environment()
    ceil = measure_ceilings(quick)
    progress(f"ceilings: {ceil}")

    def go(spec):
        env_extra = None
        if spec["impl"] == "composition_jax_sharded":
            spec = dict(spec, devices=spec.get("devices", ndev))
        if spec.get("devices", 1) > 1:
            env_extra = {"XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") +
                                       f" --xla_force_host_platform_device_count={spec['devices']}")}
        rec = _worker(dict(spec, budget_s=budget_s), env_extra)
        rec["group"] = spec.get("group", "compare")
        rec["axis"] = spec.get("axis")
        records.append(rec)
        if "error" in rec:
            progress(f"  {spec['impl']:<24} {spec} ERROR {rec['error'][-300:]}")
        else:
            progress(f"  {rec['impl']:<24} {rec['problem']:<28} {rec['method']:<15} "
                     f"{rec['particle_steps_per_s']:.3e} ps/s  first call {rec['first_call_s']:.2f}s")
        _write(records, env, ceil, quick, out_dir)
        return rec

    def compare(base, names):
        refs = [go(dict(base, impl=i)) for i in CJ_IMPLS if i in names]
        refs = [r for r in refs if "error" not in r]
        best = max(refs, key=lambda r: r["particle_steps_per_s"], default=None)
        single = next((r for r in refs if r["impl"] == "composition_jax"), None)
        for impl in names:
            if impl in CJ_IMPLS:
                continue
            if impl == "composition_jax_fullcov" and (base["d"] > 64 or base["k"] > 1
                                                       or base["method"] != "euler_maruyama"):
                continue  # the "before" path: K d^2 per particle, too slow there
            rec = go(dict(base, impl=impl))
            if "error" in rec or best is None:
                continue
            rec["agreement"] = agreement(best, rec)
            rec["ratio_cj_over_impl"] = best["particle_steps_per_s"] / rec["particle_steps_per_s"]
            if single is not None:
                rec["ratio_cj1_over_impl"] = (single["particle_steps_per_s"]
                                              / rec["particle_steps_per_s"])
            _write(records, env, ceil, quick, out_dir)

    # 1. side by side: every size x k for Euler-Maruyama, k = 1 for Heun
    for method in methods:
        for size in sizes if method == "euler_maruyama" or not quick else sizes[:1]:
            for k in ks if method == "euler_maruyama" else (1,):
                compare(dict(size, k=k, steps=steps, method=method, repeats=repeats, seed=0),
                        impls)
    if loops if loops is not None else not quick:  # each peer against its straightforward self
        base = dict(sizes[0], k=1, steps=steps, method=methods[0], repeats=repeats, seed=0,
                    group="loop")
        for impl in impls:
            if impl not in LOOP_VERSIONS or not available(LOOP_VERSIONS[impl]):
                continue
            fast, slow = go(dict(base, impl=impl)), go(dict(base, impl=LOOP_VERSIONS[impl]))
            if "error" not in fast and "error" not in slow:
                slow["agreement"] = agreement(fast, slow)
                fast["ratio_peer_over_loop"] = (fast["particle_steps_per_s"]
                                                / slow["particle_steps_per_s"])
                _write(records, env, ceil, quick, out_dir)
    if scaling and not quick:  # (quick: its second size has N = 1k already)
        # N = 1k, where per-step overhead matters most
        compare({"d": 2, "K": 8, "n": 1000, "k": 1, "steps": steps,
                 "method": "euler_maruyama", "repeats": repeats, "seed": 0}, impls)
    if scaling:  # 2. scaling of composition_jax
        sc = {"impl": "composition_jax", "steps": steps, "method": "euler_maruyama",
              "repeats": repeats, "group": "scaling"}
        ns = (1000, 4000) if quick else (1000, 10_000, 100_000, 400_000)
        for n in ns:
            go(dict(sc, d=2, K=8, k=1, n=n, axis="N"))
            go(dict(sc, d=2, K=8, k=1, n=n, axis="N_traj", record_every=max(1, steps // 10)))
        for d in ((2, 16) if quick else (2, 16, 64, 256, 1024)):
            go(dict(sc, d=d, K=16, k=1, n=2000 if quick else 4000, axis="d"))
        for K in ((4, 16) if quick else (4, 16, 64, 256)):
            go(dict(sc, d=16, K=K, k=1, n=2000 if quick else 4000, axis="K"))
        for k in ((1, 2) if quick else (1, 2, 4, 8)):
            go(dict(sc, d=16, K=8, k=k, n=2000 if quick else 4000, axis="k"))
        for nd in ((1, 2) if quick else (1, 2, 4, 8)):
            go(dict(sc, impl="composition_jax" if nd == 1 else "composition_jax_sharded",
                    d=2, K=8, k=1, n=8000 if quick else 100_000, devices=nd, axis="devices"))
    return _finish(records, env, ceil, quick, out_dir, progress)


def _write(records, env, ceil, quick, out_dir, complete: bool = False) -> dict:
    """Attach rooflines and (re)write ``results.json``; returns the result."""
    for rec in records:
        if rec.get("impl") in CJ_IMPLS and "error" not in rec:
            rec["roofline"] = _roofline(rec, ceil)
    result = {"environment": env, "ceilings": ceil, "quick": quick, "complete": complete,
              "records": records}
    _atomic_json(out_dir / "results.json", result)
    return result


def _finish(records, env, ceil, quick, out_dir, progress) -> dict:
    result = _write(records, env, ceil, quick, out_dir, complete=True)
    table = ratio_table(result)
    (out_dir / "table.md").write_text(table)
    progress(table)
    try:
        plot(result, out_dir)
    except ImportError:
        progress("matplotlib not installed: no plots")
    return result


def failures(result: dict) -> list[str]:
    """Records that errored or whose sample law disagrees with composition_jax's."""
    bad = []
    for r in result["records"]:
        if "error" in r:
            bad.append(f"{r.get('impl')} {r.get('d')},{r.get('K')},{r.get('k')},{r.get('n')}: error")
        elif "agreement" in r and not r["agreement"]["agree"]:
            bad.append(f"{r['impl']} {r['problem']} {r['method']}: law differs "
                       f"(max z {r['agreement']['max_mean_z']:.1f})")
    return bad


def _atomic_json(path: Path, obj) -> None:
    """Write ``path`` through ``<path>.part`` and an atomic rename (mode from the umask, unlike
    ``tempfile.mkstemp``'s 0600)."""
    part = path.with_name(path.name + ".part")
    try:
        with open(part, "w") as f:
            json.dump(obj, f, indent=1)
        os.replace(part, path)
    finally:
        if os.path.lexists(part):
            os.unlink(part)


def _label(r: dict) -> str:
    return r["impl"] + (f" ({r['devices']} dev)" if r.get("devices", 1) > 1 else "")


def ratio_table(result: dict) -> str:
    """Markdown: every compared implementation with its throughput and the speed-up of the best
    composition_jax configuration (and of single-device composition_jax) over it."""
    recs = [r for r in result["records"] if r.get("group") == "compare" and "error" not in r]
    lines = [
        ("| problem | method | implementation | particle-steps/s | first call (s) | peak RSS (MB) "
         "| cj speed-up (best / 1 device) | same law (max z / thr) |"),
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in recs:
        ag = r.get("agreement")
        if ag is None:
            same = "-"
        else:
            verdict = "yes" if ag["agree"] else "NO"
            same = f"{verdict} ({ag['max_mean_z']:.1f}/{ag['z_threshold']:.1f})"
        name = _label(r)
        if "ratio_cj_over_impl" in r:
            ratio = f"{r['ratio_cj_over_impl']:.2f}x / {r.get('ratio_cj1_over_impl', float('nan')):.2f}x"
        else:
            ratio = "-"
        lines.append(
            f"| {r['problem']} | {r['method']} | {name} | {r['particle_steps_per_s']:.3g} "
            f"| {r['first_call_s']:.2f} | {r['peak_rss_mb']:.0f} | {ratio} | {same} |"
        )
    loop = [r for r in result["records"] if "ratio_peer_over_loop" in r]
    if loop:
        lines += ["", ("| problem | method | peer | particle-steps/s | speed-up over its "
                       "straightforward version |"), "|---|---|---|---|---|"]
        for r in loop:
            lines.append(f"| {r['problem']} | {r['method']} | {r['impl']} "
                         f"| {r['particle_steps_per_s']:.3g} | {r['ratio_peer_over_loop']:.2f}x |")
    roof = [r for r in result["records"] if "roofline" in r and r.get("group") == "compare"]
    if roof:
        lines += ["", ("| problem | method | implementation | binding ceiling | floor ps/s "
                       "| fraction of binding ceiling | of additive bound (matmul + normals + "
                       "memory) |"),
                  "|---|---|---|---|---|---|---|"]
        for r in roof:
            rf = r["roofline"]
            name = _label(r)
            lines.append(f"| {r['problem']} | {r['method']} | {name} | {rf['binding_ceiling']} "
                         f"| {rf['floor_particle_steps_per_s']:.3g} | {rf['fraction_of_ceiling']:.2f} "
                         f"| {rf['fraction_of_additive_bound']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sc = [r for r in result["records"] if r.get("group") == "scaling" and "error" not in r]
    axes_spec = [("N", "n"), ("d", "d"), ("K", "K"), ("k", "k"), ("devices", "devices")]
    fig, axs = plt.subplots(1, len(axes_spec), figsize=(4 * len(axes_spec), 3.5))
    for ax, (axis, key) in zip(axs, axes_spec):
        rs = sorted((r for r in sc if r.get("axis") == axis), key=lambda r: r[key])
        if rs:
            ax.loglog([r[key] for r in rs], [r["particle_steps_per_s"] for r in rs], "o-")
        ax.set_xlabel(key)
        ax.set_ylabel("particle-steps / s")
        ax.set_title(f"composition_jax vs {key}")
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "scaling.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for axis, label in (("N", "final state only"), ("N_traj", "trajectory every steps/10")):
        rs = sorted((r for r in sc if r.get("axis") == axis), key=lambda r: r["n"])
        if rs:
            ax.loglog([r["n"] for r in rs], [r["peak_rss_mb"] for r in rs], "o-", label=label)
    ax.set_xlabel("particles N")
    ax.set_ylabel("peak RSS (MB)")
    if ax.get_lines():
        ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "memory.png", dpi=100)
    plt.close(fig)

    cmp_ = [r for r in result["records"] if r.get("group") == "compare" and "error" not in r]
    probs = sorted({(r["problem"], r["method"]) for r in cmp_})
    impls = sorted({r["impl"] for r in cmp_})
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(probs)), 4))
    width = 0.8 / max(1, len(impls))
    for i, impl in enumerate(impls):
        ys = []
        for prob in probs:
            r = next((r for r in cmp_ if (r["problem"], r["method"]) == prob and r["impl"] == impl), None)
            ys.append(r["particle_steps_per_s"] if r else 0)
        ax.bar([j + i * width for j in range(len(probs))], ys, width, label=impl)
    ax.set_yscale("log")
    ax.set_xticks([j + 0.4 for j in range(len(probs))])
    ax.set_xticklabels([f"{p}\n{m}" for p, m in probs], fontsize=6, rotation=30)
    ax.set_ylabel("particle-steps / s")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "compare.png", dpi=100)
    plt.close(fig)


#: the accelerator sweep: particles at d = 2 (the sampler's per-step overheads and the noise
#: generator), then dimensions at fixed N (the mixture matmuls); k = 1, K = 16, 100 steps
BACKEND_SWEEP = {
    "n": [{"d": 2, "K": 16, "n": n} for n in (10_000, 100_000, 1_000_000, 4_000_000)],
    "d": [{"d": d, "K": 16, "n": 100_000} for d in (16, 64, 256, 1024)],
}


def backend_sweep(sweep: dict | None = None, *, k: int = 1, steps: int = 100,
                  repeats: int = 3, method: str = "euler_maruyama", mesh_all: bool = False,
                  progress=print) -> list[dict]:
    """composition_jax alone on this process's default backend (CPU, GPU or TPU), in this
    process: for each size of ``sweep`` (axis -> list of ``dict(d, K, n)``), the first call
    (trace + compile), the median of ``repeats`` steady calls, particle-steps/s, and the device
    record of :func:`~.worker.device_info` (platform, kind, memory statistics where the backend
    reports them). Sizes run in the order given, so a device's ``peak_bytes_in_use`` after a
    size is that size's peak when sizes grow along each axis (the peak counter never resets).
    ``mesh_all``: particles sharded over all devices of all processes (``cj.particle_mesh()``;
    under ``jax.distributed`` every process runs the same sweep; the summary is of this
    process's first shard)."""
    import statistics

    import jax
    import numpy as np

    import composition_jax as cj

    from .impls import build_cj_model
    from .problem import T_MIN, flops_per_particle_step, make_problem
    from .worker import device_info

    records = []
    extra = {"mesh": cj.particle_mesh()} if mesh_all else {}
    for axis, sizes in (sweep or BACKEND_SWEEP).items():
        for size in sizes:
            p = make_problem(size["d"], size["K"], k, size["n"], steps)
            model, sched = build_cj_model(p)
            key = jax.random.key(0)

            def go(key=key, model=model, sched=sched, p=p):
                x = cj.sample(key, model, sched, (p.n, p.d), method=method, steps=p.steps,
                              t_min=T_MIN, denoise_final=False, **extra)
                return jax.block_until_ready(x)

            try:
                t0 = time.perf_counter()
                x = go()
                first = time.perf_counter() - t0
                times = []
                for _ in range(max(1, repeats)):
                    t0 = time.perf_counter()
                    x = go()
                    times.append(time.perf_counter() - t0)
            except Exception as e:  # noqa: BLE001 - e.g. out of device memory: record, go on
                rec = {"axis": axis, **size, "k": k, "steps": steps, "error": repr(e)[-2000:],
                       "device": device_info("composition_jax")}
                records.append(rec)
                progress(f"  {p.name:<28} ERROR {rec['error'][-200:]}")
                continue
            steady = statistics.median(times)
            xs = np.asarray(x.addressable_shards[0].data if mesh_all else x, np.float64)
            rec = {"impl": "composition_jax", "axis": axis, "problem": p.name, "method": method,
                   "d": p.d, "K": p.K, "k": k, "n": p.n, "steps": steps,
                   "first_call_s": first, "steady_s": steady, "repeat_s": times,
                   "particle_steps_per_s": p.n * steps / steady,
                   "flops_per_particle_step": flops_per_particle_step(p, method),
                   "achieved_flops_per_s": flops_per_particle_step(p, method) * p.n * steps / steady,
                   "peak_rss_mb": _peak_rss_mb(),
                   "devices_used": jax.device_count() if mesh_all else 1,
                   "device": device_info("composition_jax"),
                   "summary": {"mean": xs.mean(0)[:8].tolist(),
                               "finite": bool(np.all(np.isfinite(xs)))}}
            records.append(rec)
            progress(f"  {p.name:<28} {rec['particle_steps_per_s']:.3e} ps/s  first call "
                     f"{first:.2f}s  {rec['device'].get('memory_stats', '')}")
    return records


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_backend(out_dir: str | Path, *, sweep: dict | None = None, progress=print,
                **kwargs) -> dict:
    """Accelerator mode: :func:`backend_sweep` (composition_jax only, whatever backend JAX
    finds) into ``out_dir/results.json`` (``"mode": "backend"``, the environment, the records;
    every record names its device). Written once, at the end, atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = environment()
    progress(f"backend: {env['devices']}")
    records = backend_sweep(sweep, progress=progress, **kwargs)
    result = {"mode": "backend", "environment": env, "complete": True, "records": records}
    _atomic_json(out_dir / "results.json", result)
    return result
