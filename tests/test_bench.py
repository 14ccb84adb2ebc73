"""The benchmark harness runs end to end on a tiny problem and its implementations sample the
same law (no timing assertions)."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from composition_jax.bench import harness, impls, problem


def test_problem_and_flop_count():
    p = problem.make_problem(3, 4, 2, 10, steps=7)
    assert p.means.shape == (3, 4, 3) and p.weights.shape == (3, 4) and p.variances.shape == (3, 4)
    np.testing.assert_allclose(p.weights.sum(1), 1.0, rtol=1e-6)
    g = p.grid()
    assert g[0] == 1.0 and g[-1] == problem.T_MIN and len(g) == 8
    # 3 models x (4 K d + 8 K + 4 d) + 2 k d + 6 d
    assert problem.flops_per_particle_step(p) == 3 * (48 + 32 + 12) + 12 + 18


def test_numpy_recursion_matches_composition_jax_exact_law():
    """The NumPy reference and the hand-written JAX scan integrate the same recursion as
    cj.sample: on a one-component (Gaussian) problem all three match the exact law of that
    discretization (sampler_law): means within 5 SE, variances within 5 SE of the Gaussian
    sample variance (sd(S_ii) = C_ii sqrt(2 / (n - 1)))."""
    import jax.numpy as jnp

    import composition_jax as cj
    from composition_jax.verify.sampler_law import sampler_law

    p = problem.make_problem(2, 1, 1, 20000, steps=30)
    model, sched = impls.build_cj_model(p)
    law = sampler_law(model, sched, method="euler_maruyama", steps=p.steps, t_min=problem.T_MIN,
                      denoise_final=False)
    mean, cov = np.asarray(law.mean), np.asarray(law.cov)
    se = np.sqrt(np.diag(cov) / p.n)
    se_var = np.diag(cov) * np.sqrt(2.0 / (p.n - 1))
    y = np.asarray(cj.sample(cj_key(), model, sched, (p.n, 2), steps=p.steps,
                             t_min=problem.T_MIN, denoise_final=False))
    assert jnp.all(jnp.isfinite(y))
    for name, x in (("numpy", impls.run_numpy(p, 0, "euler_maruyama")()),
                    ("jax_scan", impls.run_jax_scan(p, 0, "euler_maruyama")()),
                    ("composition_jax", y)):
        assert np.max(np.abs(x.mean(0) - mean) / se) < 5.0, name
        assert np.max(np.abs(x.var(0, ddof=1) - np.diag(cov)) / se_var) < 5.0, name


@pytest.mark.parametrize("method", ["euler_maruyama", "ode_heun"])
def test_fused_numpy_equals_the_straightforward_recursion(method):
    """The fused NumPy peer (two matmuls per score, scalars folded, the same random stream)
    computes the same numbers as the looped one, to float32 rounding: the algebra of
    impls.fused_tables (logits from [x, |x|^2], score from one product) is exact. Three
    composed models (k = 2: background coefficient -1) with unequal component variances."""
    p = problem.make_problem(3, 4, 2, 500, steps=25)
    a = impls.run_numpy(p, 1, method)()
    b = impls.run_numpy_loop(p, 1, method)()
    assert np.all(np.isfinite(a))
    np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-4)


def cj_key():
    import jax

    return jax.random.key(3)


@pytest.mark.parametrize("names", [
    # default suite: one subprocess per implementation costs ~4 s of CPU (imports, compile)
    ("composition_jax", "numpy"),
    pytest.param(("composition_jax", "composition_jax_sharded", "jax_scan", "jax_scan_wide",
                  "numpy", "diffrax", "diffrax_wide", "torch", "torch_compile"),
                 marks=pytest.mark.slow, id="all"),
])
def test_tiny_end_to_end(tmp_path, names):
    names = [i for i in names if impls.available(i)]
    res = harness.run_bench(tmp_path, quick=True, impls=names, progress=lambda *_: None,
                            sizes=[{"d": 2, "K": 4, "n": 3000}], ks=(1,), steps=20, repeats=1,
                            scaling=False, methods=("euler_maruyama",),
                            loops=len(names) > 2)  # the straightforward peers: slow case
    recs = res["records"]
    assert all("error" not in r for r in recs), [r.get("error") for r in recs]
    assert {r["impl"] for r in recs if r["group"] == "compare"} == set(names)
    if len(names) > 2:  # each installed peer with a straightforward version met it
        assert {r["impl"] for r in recs if r["group"] == "loop"} == {
            i for n in names if n in impls.LOOP_VERSIONS and impls.available(impls.LOOP_VERSIONS[n])
            for i in (n, impls.LOOP_VERSIONS[n])}
    for r in recs:
        if r["impl"] not in harness.CJ_IMPLS and r["group"] == "compare":
            assert r["agreement"]["agree"], r["agreement"]
            assert r["ratio_cj_over_impl"] > 0 and r["ratio_cj1_over_impl"] > 0
    for r in recs:  # every record names where it ran
        assert r["device"]["platform"] == "cpu" and r["device"]["device_count"] >= 1
    if "composition_jax_sharded" in names:
        sharded = next(r for r in recs if r["impl"] == "composition_jax_sharded")
        assert sharded["devices"] >= 2 and sharded["device"]["device_count"] >= 2
        # same key, same law: and in fact the same particles, sharded or not
        single = next(r for r in recs if r["impl"] == "composition_jax")
        np.testing.assert_allclose(sharded["summary"]["mean"], single["summary"]["mean"],
                                   rtol=1e-4, atol=1e-5)
    loops = [r for r in recs if r.get("group") == "loop"]
    for r in loops:  # each peer next to its straightforward version, same law
        if "ratio_peer_over_loop" in r:
            assert r["ratio_peer_over_loop"] > 0
        else:
            assert r["agreement"]["agree"], r
    assert harness.failures(res) == []
    saved = json.loads((tmp_path / "results.json").read_text())
    ceil = saved["ceilings"]
    assert saved["environment"]["jax"] and ceil["matmul_flops_per_s"] > 0
    # the normals' ceiling is the best generator under any compiler setting cj.sample uses (and
    # XLA's defaults); the stream's working sets grow up to the DRAM-sized one that gives
    # bandwidth_bytes_per_s
    assert ceil["normals_per_s"] == max(ceil[f"normals_per_s_{g}{w}"] for g in (
        "jax_random", "cj_noise") for w in ("", "_wide", "_columns"))
    sizes = [b for b, _ in ceil["bandwidth_by_working_set"]]
    assert sizes == sorted(set(sizes)) and len(sizes) >= 3
    assert ceil["bandwidth_by_working_set"][-1][1] == ceil["bandwidth_bytes_per_s"]
    assert "composition_jax" in (tmp_path / "table.md").read_text()
    if loops:
        assert "straightforward version" in (tmp_path / "table.md").read_text()
    assert recs[0]["roofline"]["binding_ceiling"] in (
        "matmul_flops", "normal_samples", "memory_bandwidth")


def test_roofline_reads_the_bandwidth_of_the_working_set():
    """The memory term uses the stream measured on the smallest working set at least as large
    as the step's ``16 d n`` bytes (a cached state is not bound by DRAM), else DRAM's."""
    ceil = {"matmul_flops_per_s": 1e12, "normals_per_s": 1e12, "bandwidth_bytes_per_s": 1e9,
            "bandwidth_by_working_set": [[1 << 20, 1e11], [1 << 24, 1e10], [1 << 28, 1e9]]}
    rec = {"particle_steps_per_s": 1e6, "d": 64, "flops_per_particle_step": 1,
           "normals_per_particle_step": 1}
    for n, bw in ((100, 1e11), (1000, 1e11), (2000, 1e10), (100_000, 1e9), (10**6, 1e9)):
        roof = harness._roofline(dict(rec, n=n), ceil)
        assert roof["binding_ceiling"] == "memory_bandwidth"
        np.testing.assert_allclose(roof["floor_particle_steps_per_s"], bw / (16 * 64))
        np.testing.assert_allclose(roof["fraction_of_ceiling"], 1e6 * 16 * 64 / bw)


def test_agreement_detects_a_shift():
    ref = {"n": 1000, "summary": {"mean": [0.0, 0.0], "var": [1.0, 1.0], "finite": True}}
    same = {"n": 1000, "summary": {"mean": [0.05, -0.03], "var": [1.0, 1.1], "finite": True}}
    off = {"n": 1000, "summary": {"mean": [0.5, 0.0], "var": [1.0, 1.0], "finite": True}}
    assert harness.agreement(ref, same)["agree"]
    assert not harness.agreement(ref, off)["agree"]
    bad = dict(off, impl="numpy", problem="p", method="m", agreement=harness.agreement(ref, off))
    assert len(harness.failures({"records": [bad, {"impl": "torch", "error": "boom"}]})) == 2


def test_workers_start_cold(monkeypatch, tmp_path):
    """A first call is trace + compile for every implementation on every rerun: the workers run
    without JAX's persistent compilation cache and with a fresh TorchInductor cache folder that is
    removed afterwards; the caller's other settings pass through; results.json says so."""
    seen, real_run = {}, subprocess.run

    def fake_run(cmd, env=None, **kw):
        if "composition_jax.bench.worker" not in cmd:  # e.g. platform.processor()'s uname
            return real_run(cmd, env=env, **kw)
        seen.update(env=env, inductor_exists=Path(env["TORCHINDUCTOR_CACHE_DIR"]).is_dir())
        return subprocess.CompletedProcess(cmd, 0, stdout='RESULT {"ok": 1}\n', stderr="")

    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.setenv("CJ_BENCH_PROBE", "kept")
    monkeypatch.setattr(harness.subprocess, "run", fake_run)
    assert harness._worker({"impl": "numpy"}, {"XLA_FLAGS": "--x"}) == {"ok": 1}
    env = seen["env"]
    assert "JAX_COMPILATION_CACHE_DIR" not in env
    assert env["TORCHINDUCTOR_CACHE_DIR"] != str(tmp_path / "inductor") and seen["inductor_exists"]
    assert not Path(env["TORCHINDUCTOR_CACHE_DIR"]).exists()  # removed after the worker
    assert env["CJ_BENCH_PROBE"] == "kept" and env["XLA_FLAGS"] == "--x"
    assert "cold" in harness.environment()["first_call"]


def test_cli_refuses_non_empty_out(tmp_path):
    (tmp_path / "x").write_text("keep")
    proc = subprocess.run([sys.executable, "-m", "composition_jax.cli", "bench", "--out",
                           str(tmp_path)], capture_output=True, text=True, check=False)
    assert proc.returncode != 0 and "--force" in (proc.stderr + proc.stdout)
    assert (tmp_path / "x").read_text() == "keep"


@pytest.mark.slow
def test_quick_cli_runs(tmp_path):
    out = tmp_path / "b"
    proc = subprocess.run([sys.executable, "-m", "composition_jax.cli", "bench", "--quick",
                           "--out", str(out)], capture_output=True, text=True, timeout=1200,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "results.json").exists() and (out / "scaling.png").exists()


def test_backend_only_sweep(tmp_path):
    """Accelerator mode on the CPU backend, two tiny sizes: throughput, first call, the device in
    every record (memory statistics where the backend has them: not on CPU), results.json."""
    sweep = {"n": [{"d": 2, "K": 2, "n": 64}, {"d": 2, "K": 2, "n": 128}]}
    res = harness.run_backend(tmp_path, sweep=sweep, steps=5, repeats=1,
                              progress=lambda *_: None)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == json.loads(json.dumps(res)) and saved["mode"] == "backend"
    recs = saved["records"]
    assert [r["n"] for r in recs] == [64, 128] and all("error" not in r for r in recs)
    for r in recs:
        assert r["particle_steps_per_s"] > 0 and r["first_call_s"] > 0
        assert r["device"]["platform"] == jax.devices()[0].platform
        assert r["device"]["device_kind"] == jax.devices()[0].device_kind
        assert r["summary"]["finite"] and len(r["summary"]["mean"]) == 2
        assert ("memory_stats" in r["device"]) == bool(jax.devices()[0].memory_stats())


@pytest.mark.slow
def test_training_throughput_benchmark_runs(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "benchmarks" / "training_throughput.py"
    spec = importlib.util.spec_from_file_location("training_throughput", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    # optax's own update mixes Python floats with its int32 step count, which strict promotion
    # (on in every test) rejects; the trainer's train() handles that, the benchmark runs optax
    # as a user would.
    with jax.numpy_dtype_promotion("standard"):
        mod.main(["--quick"])
    lines = [json.loads(s) for s in capsys.readouterr().out.splitlines() if s.startswith("{")]
    rec = [r for r in lines if "examples_per_s" in r]
    assert rec and rec[0]["examples_per_s"] > 0 and rec[0]["steps"] >= 100
