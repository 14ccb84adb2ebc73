"""Learned-model experiments: blob generator + detector (exact oracles), binomial intervals, the
learned-vector decision rule, and the ``reproduce --learned`` wiring (with a stand-in runner: no
training). The pipelines at minimal size (one sampler compile per composition: ~40 s CPU) and
the quick-mode contrast are ``slow``."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from composition_jax.experiments import blobs
from composition_jax.experiments._common import binomial, verdict_from_interval
from composition_jax.experiments.length_generalization import (
    LengthGenConfig,
    evaluate_counts,
    run_length_generalization,
)

CLEAN = blobs.BlobConfig(amp_lo=1.0, amp_hi=1.0, jitter=0.0, noise_std=0.0)


def _np_templates(cfg):
    yy, xx = np.meshgrid(np.arange(cfg.height), np.arange(cfg.width), indexing="ij")
    c = np.asarray(cfg.locations)
    r2 = (yy.reshape(-1)[None] - c[:, :1]) ** 2 + (xx.reshape(-1)[None] - c[:, 1:]) ** 2
    return np.exp(-r2 / (2 * cfg.radius**2))


def test_templates_and_clean_render_exact(key):
    g = np.asarray(blobs.templates(CLEAN))
    np.testing.assert_allclose(g, _np_templates(CLEAN), rtol=1e-5, atol=1e-7)  # float32
    present = jnp.array([[True, False, True, False, False, True], [False] * 6])
    x = np.asarray(blobs.render(key, CLEAN, present))
    np.testing.assert_allclose(x[0], g[0] + g[2] + g[5], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(x[1], 0.0)


def test_detector_responses_exact():
    g = _np_templates(CLEAN)
    r = np.asarray(blobs.detector_responses(jnp.asarray(g, jnp.float32), CLEAN))
    oracle = (g @ g.T) / np.sum(g * g, 1)[None, :]  # response at l to a unit blob at m
    np.testing.assert_allclose(r, oracle, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.diag(r), 1.0, rtol=1e-6)
    # far below the threshold: the locations do not see each other
    assert np.max(r - np.diag(np.diag(r))) < 0.1 * CLEAN.threshold
    # continuum cross-talk formula is a close match on the pixel grid for r = 0.7
    ct = blobs.cross_talk(CLEAN)
    np.testing.assert_allclose(np.diag(ct), 1.0)
    assert CLEAN.threshold == 0.5
    np.testing.assert_array_equal(np.asarray(blobs.detect(jnp.asarray(g, jnp.float32), CLEAN)),
                                  np.eye(6, dtype=bool))


def test_presence_laws(key):
    cfg = blobs.BlobConfig()
    n, L, q = 4000, cfg.num_locations, cfg.clutter_prob
    k = jax.random.split(key, 5)
    p = np.asarray(blobs.presence(k[0], cfg, 50, "single_at", 3))
    np.testing.assert_array_equal(p, np.broadcast_to(np.arange(L) == 3, (50, L)))
    assert not np.asarray(blobs.presence(k[1], cfg, 50, "empty")).any()
    p = np.asarray(blobs.presence(k[2], cfg, n, "single_random"))
    np.testing.assert_array_equal(p.sum(1), 1)
    freq = p.mean(0)  # multinomial(1/L): 5 standard errors
    assert np.all(np.abs(freq - 1 / L) < 5 * math.sqrt((1 / L) * (1 - 1 / L) / n))
    p = np.asarray(blobs.presence(k[3], cfg, n, "cluttered_at", 2))
    assert p[:, 2].all()
    others = np.delete(p, 2, axis=1)
    assert np.all(np.abs(others.mean(0) - q) < 5 * math.sqrt(q * (1 - q) / n))
    p = np.asarray(blobs.presence(k[4], cfg, n, "clutter"))
    assert np.all(np.abs(p.mean(0) - q) < 5 * math.sqrt(q * (1 - q) / n))


def test_detector_recovers_generated_scenes(key):
    # worst case blob: amplitude 0.8 displaced by jitter 0.25 on both axes keeps the response
    # far above 0.5; noise adds s0 / |g| ~ 0.04 sd: a misdetection is a > 5 sd event per location
    cfg = blobs.BlobConfig()
    x, p = blobs.scenes(key, cfg, 500, "clutter")
    np.testing.assert_array_equal(np.asarray(blobs.detect(x, cfg)), np.asarray(p))


def test_blob_errors(key):
    with pytest.raises(ValueError, match="locations must have shape"):
        blobs.BlobConfig(locations=((1.0, 2.0, 3.0),))
    with pytest.raises(ValueError, match="height must be a positive int"):
        blobs.BlobConfig(height=0)
    with pytest.raises(ValueError, match="clutter_prob"):
        blobs.BlobConfig(clutter_prob=1.5)
    with pytest.raises(ValueError, match="radius > 0"):
        blobs.BlobConfig(radius=0.0)
    cfg = blobs.BlobConfig()
    with pytest.raises(ValueError, match="kind must be one of"):
        blobs.presence(key, cfg, 3, "two")
    with pytest.raises(ValueError, match="needs location"):
        blobs.presence(key, cfg, 3, "single_at")
    with pytest.raises(ValueError, match="takes no location"):
        blobs.presence(key, cfg, 3, "empty", 1)
    with pytest.raises(ValueError, match=r"present must have shape \(n, 6\)"):
        blobs.render(key, cfg, jnp.zeros((3, 5), bool))
    with pytest.raises(ValueError, match=r"x must have shape \(n, 64\)"):
        blobs.detector_responses(jnp.zeros((3, 63)), cfg)


def test_binomial_wilson_and_verdicts():
    b = binomial(30, 100, z=3.0)
    p, n, z = 0.3, 100, 3.0
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert b["fraction"] == p and b["se"] == pytest.approx(math.sqrt(0.21 / 100))
    assert b["lower"] == pytest.approx(centre - half) and b["upper"] == pytest.approx(centre + half)
    assert verdict_from_interval(b) == "failure"
    assert verdict_from_interval(binomial(100, 100)) == "success"
    assert binomial(100, 100)["lower"] == pytest.approx(100 / 109)  # Wilson at p = 1: n/(n+z^2)
    assert verdict_from_interval(binomial(5, 10)) == "inconclusive"
    with pytest.raises(ValueError, match="n must be >= 1"):
        binomial(0, 0)


def test_evaluate_counts():
    det = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 0]], bool)
    r = evaluate_counts(det, np.array([1, 1, 0], bool))
    assert r["exact"]["successes"] == 1 and r["all_requested"]["successes"] == 2
    assert r["mean_found_on_S"] == pytest.approx(1.25) and r["mean_extra_off_S"] == 0.25


@pytest.mark.slow
def test_length_generalization_pipeline_minimal(tmp_path):
    cfg = LengthGenConfig.for_mode("minimal")
    out = run_length_generalization(cfg, cache=tmp_path)
    names = [r["name"] for r in out["records"]]
    assert names == ["learned_length_empty", "learned_length_bayes", "learned_length_cluttered",
                     "learned_length_local"]
    for r in out["records"]:
        assert set(r) == {"name", "title", "expected", "observed", "metrics", "reasons"}
        assert r["observed"] in ("success", "failure", "inconclusive")
        assert set(r["metrics"]["per_k"]) == {"1", "2"}
        for v in r["metrics"]["per_k"].values():
            assert v["exact"]["n"] == cfg.n_samples
    assert set(out["counts"]) == {"single", "cluttered", "local"}
    assert not out["training"]["single"]["cached"]
    # the block-local network is exactly local even after 4 training steps
    v = out["records"][3]["metrics"]["score_locality"]["verdict"]
    assert v["exactly_local"] and v["off_block_max"] == 0.0
    again = run_length_generalization(cfg, cache=tmp_path)  # parameters come from the cache
    assert all(again["training"][v]["cached"] for v in ("single", "cluttered", "local"))
    assert _same_counts(again["counts"], out["counts"])  # same key + params: same samples


def _same_counts(a, b):
    return all(a[v][bg][k]["exact"]["successes"] == b[v][bg][k]["exact"]["successes"]
               for v in a for bg in a[v] for k in a[v][bg])


@pytest.mark.slow
@pytest.mark.parametrize("network", ["local", "mlp"])
def test_learned_vector_pipeline_minimal(tmp_path, network):
    """Both networks at minimal size: the two records, the training information of each network,
    parameters from the cache on a rerun (same samples), and the block-local conditionals: the
    composed score over the empty background is exactly block-local (a block's output does not
    move when the other block's input does), the unconditional model's is not."""
    import dataclasses

    from composition_jax.compose import compose
    from composition_jax.experiments.learned_vector import VectorConfig, run_learned_vector

    cfg = dataclasses.replace(VectorConfig.for_mode("minimal"), network=network)
    out = run_learned_vector(cfg, cache=tmp_path)
    assert [r["name"] for r in out["records"]] == ["learned_vector_empty", "learned_vector_bayes"]
    for r in out["records"]:
        assert r["observed"] in ("success", "failure", "inconclusive")
        assert np.isfinite(r["metrics"]["budget"]["kl"])
    assert out["training"]["cached"] is False
    if network == "local":
        assert set(out["training"]) >= {"conditionals", "unconditional"}
        assert out["training"]["conditionals"]["cached"] is False
        assert out["training"]["unconditional"]["cached"] is False
    again = run_learned_vector(cfg, cache=tmp_path)
    assert again["training"]["cached"] is True
    for b in ("background", "unconditional"):
        np.testing.assert_array_equal(again["samples"][b], out["samples"][b])
    models = out["models"]
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4)), jnp.float32)
    moved = x.at[:, 2:].add(1.0)  # block {2, 3} moves, block {0, 1} stays
    for bg, local in (("background", network == "local"), ("unconditional", False)):
        comp = compose(models[bg], [models["p1"], models["p2"]])
        score = jax.vmap(comp.score, in_axes=(0, None))
        d = np.abs(np.asarray(score(moved, 0.3) - score(x, 0.3)))[:, :2]
        assert (d.max() == 0.0) == local, (bg, d.max())


def test_length_config_errors():
    with pytest.raises(ValueError, match="mode must be"):
        LengthGenConfig.for_mode("huge")
    with pytest.raises(ValueError, match="ks must be a non-empty subset"):
        LengthGenConfig(ks=(0, 7)).kset()
    with pytest.raises(ValueError, match="network must be 'mlp' or 'unet'"):
        LengthGenConfig(network="cnn").make_network()
    from composition_jax.experiments.learned_vector import VectorConfig, run_learned_vector

    with pytest.raises(ValueError, match="cfg.network must be 'local' or 'mlp'"):
        run_learned_vector(VectorConfig(network="unet"))


@pytest.mark.slow
def test_length_generalization_quick_contrast(tmp_path):
    """Quick mode: the empty background length-generalizes, the unconditional one fails."""
    out = run_length_generalization(LengthGenConfig.for_mode("quick"), cache=tmp_path)
    rec = {r["name"]: r for r in out["records"]}
    assert rec["learned_length_empty"]["observed"] == "success"
    assert rec["learned_length_bayes"]["observed"] == "failure"
    c = rec["learned_length_empty"]["metrics"]["contrast_empty_minus_unconditional"]["2"]
    assert c["difference"] > 3 * c["se"]
    # the block-local network (LocalScoreNet) length-generalizes over its empty background, its
    # score is exactly local there, and its conditionals over the MLP's p_u are not
    loc = rec["learned_length_local"]
    assert loc["observed"] == "success", loc["reasons"]
    v = loc["metrics"]["score_locality"]["verdict"]
    assert v["observed"] == "success" and v["off_block_max"] == 0.0, v


# ------------------------------------------------------------------ reproduce wiring (no training)
def _fake_records(observed_vector="success"):
    per_k = {"2": {"exact": binomial(60, 100), "all_requested": binomial(70, 100),
                   "mean_extra_off_S": 0.1}}
    return [
        {"name": "learned_length_empty", "title": "t1", "expected": "success",
         "observed": "success", "reasons": ["r1"],
         "metrics": {"per_k": per_k, "per_k_verdict": {"2": "inconclusive"}}},
        {"name": "learned_vector_empty", "title": "t2", "expected": "success",
         "observed": observed_vector, "reasons": ["r2"], "metrics": {"ks": 0.01}},
    ]


def _fake_zoo(monkeypatch):
    from composition_jax.verify import scenarios as sc

    def cheap(cfg, key):
        return sc.ScenarioResult("cheap", "a cheap scenario", "success", "success", {}, ["ok"])

    monkeypatch.setitem(sc.SCENARIOS, "cheap", cheap)


def _patch_learned(monkeypatch, observed_vector="success"):
    import composition_jax.experiments as ex

    calls = []

    def fake(quick=True, out_dir=None):
        calls.append((quick, out_dir))
        return _fake_records(observed_vector)

    monkeypatch.setattr(ex, "run_learned_experiments", fake)
    return calls


def _reproduce_cli(out, *extra):
    from composition_jax import cli

    return cli.main(["reproduce", "--out", str(out), "--only", "cheap", "--no-progress", *extra])


def test_reproduce_learned_wiring(tmp_path, monkeypatch, capsys):
    """--learned appends the learned records (as ScenarioResults) to report.json/report.md; the
    parameter cache is not put in --out; an inconclusive record is flagged, exit code stays 0."""
    import json

    _fake_zoo(monkeypatch)
    calls = _patch_learned(monkeypatch, observed_vector="inconclusive")
    out = tmp_path / "rep"
    assert _reproduce_cli(out, "--size", "quick", "--learned") == 0
    assert calls == [(True, None)]
    rep = json.loads((out / "report.json").read_text())
    assert [s["name"] for s in rep["scenarios"]] == [
        "cheap", "learned_length_empty", "learned_vector_empty"]
    assert [s["status"] for s in rep["scenarios"]] == ["agrees", "agrees", "inconclusive"]
    assert rep["learned"] == "on" and rep["mismatches"] == []
    assert rep["inconclusive"] == ["learned_vector_empty"] and rep["all_agree"] is False
    s = rep["scenarios"][1]
    assert s["reasons"] == ["r1"] and s["metrics"]["per_k"]["2"]["exact"]["successes"] == 60
    md = (out / "report.md").read_text()
    assert "INCONCLUSIVE" in md and "*inconclusive*" in md and "| 2 | 0.600 ± 0.049 |" in md
    assert "INCONCLUSIVE" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [
        ".composition-jax-manifest.json", "report.json", "report.md"]  # no cache

    # a definite wrong verdict is a mismatch: exit 1
    _patch_learned(monkeypatch, observed_vector="failure")
    assert _reproduce_cli(out, "--size", "quick", "--learned", "--force") == 1
    rep = json.loads((out / "report.json").read_text())
    assert rep["mismatches"] == ["learned_vector_empty"] and rep["inconclusive"] == []


@pytest.mark.parametrize("extra, state, ran", [
    (("--size", "quick"), "off", False),  # off by default in quick mode
    (("--size", "quick", "--no-learned"), "off", False),
    (("--size", "minimal", "--learned"), "skipped", False),  # never in the minimal size
    (("--size", "full", "--no-learned"), "off", False),
])
def test_reproduce_learned_defaults(tmp_path, monkeypatch, extra, state, ran):
    import json

    _fake_zoo(monkeypatch)
    calls = _patch_learned(monkeypatch)
    assert _reproduce_cli(tmp_path / "o", *extra) == 0
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    assert rep["learned"] == state and bool(calls) == ran
    assert [s["name"] for s in rep["scenarios"]] == ["cheap"]
    assert "## Learned-model experiments" in (tmp_path / "o" / "report.md").read_text()


def test_reproduce_learned_default_on_in_full_mode(tmp_path, monkeypatch):
    import json

    _fake_zoo(monkeypatch)
    calls = _patch_learned(monkeypatch)
    assert _reproduce_cli(tmp_path / "o", "--size", "full") == 0
    assert calls == [(False, None)]
    assert json.loads((tmp_path / "o" / "report.json").read_text())["learned"] == "on"


def _report(*tests):
    """A projective report from ``(name, p, effect, effect_name[, effect_lower])`` tuples (level
    0.001; without ``effect_lower`` the outcome carries none and is judged by its effect)."""
    from composition_jax.verify.projective import BlockReport, ProjectiveReport, TestOutcome

    outs = tuple(TestOutcome(t[0], 0.0, t[1], t[2], t[3], 0.001, t[1] < 0.001,
                             effect_lower=t[4] if len(t) > 4 else float("nan"))
                 for t in tests)
    return ProjectiveReport(blocks=(BlockReport("conditional 0", (0, 1), outs),), alpha=0.01,
                            num_tests=len(outs), n=100)


def test_learned_vector_decision_rule():
    """success without material rejection; failure only when a KS (or MMD) effect's lower bound
    exceeds its floor plus the total-variation budget of the learned models' score error; a
    material rejection the budget explains is inconclusive; an effect a TV budget does not
    bound (covariance) is never decisive."""
    from composition_jax.experiments.learned_vector import _effects, decide
    from composition_jax.zoo.rules import EFFECT_FLOORS

    assert _effects(_report(("ks", 1e-5, 0.08, "max_ks_D"), ("cov", 0.5, 0.1,
                                                             "relative_cov_error"))) == {
        "max_ks_D": 0.08, "relative_cov_error": 0.1}
    f, tv = EFFECT_FLOORS["max_ks_D"], 0.05
    # rejected but below the floor: not material -> success
    assert decide([_report(("ks", 1e-9, 0.98 * f, "max_ks_D"))], tv)[0] == "success"
    # just above the floor (far within the budget): material, inconclusive
    assert decide([_report(("ks", 1e-9, 1.02 * f, "max_ks_D"))], tv)[0] == "inconclusive"
    # not rejected, large effect: success
    assert decide([_report(("ks", 0.5, 0.3, "max_ks_D"))], tv)[0] == "success"
    # within floor + budget: inconclusive; beyond: failure
    obs, mat, dec = decide([_report(("ks", 1e-9, f + 0.99 * tv, "max_ks_D"))], tv)
    assert obs == "inconclusive" and len(mat) == 1 and dec == []
    obs, mat, dec = decide([_report(("ks", 1e-9, f + 1.01 * tv, "max_ks_D"))], tv)
    assert obs == "failure" and len(dec) == 1 and "TV budget 0.05" in dec[0]
    # the lower bound is what is compared: a large effect whose lower bound is within the
    # budget is not decisive, and one whose lower bound is below the floor is not material
    assert decide([_report(("ks", 1e-9, 0.5, "max_ks_D", f + 0.5 * tv))], tv)[0] == "inconclusive"
    assert decide([_report(("ks", 1e-9, 0.5, "max_ks_D", 0.5 * f))], tv)[0] == "success"
    # MMD (a metric bounded by 2 TV): decisive iff sqrt(MMD^2) > sqrt(floor) + 2 TV
    fm = EFFECT_FLOORS["mmd2_unbiased"]
    edge = (np.sqrt(fm) + 2 * tv) ** 2
    assert decide([_report(("mmd", 1e-9, 0.98 * edge, "mmd2_unbiased"))], tv)[0] == "inconclusive"
    assert decide([_report(("mmd", 1e-9, 1.02 * edge, "mmd2_unbiased"))], tv)[0] == "failure"
    # a covariance error is not bounded by a TV budget: never decisive, even with budget 0
    assert decide([_report(("cov", 1e-9, 0.9, "relative_cov_error"))], 0.0)[0] == "inconclusive"
    # decisive in one of several reports is enough
    assert decide([_report(("cov", 1e-9, 0.9, "relative_cov_error")),
                   _report(("ks", 1e-9, 0.3, "max_ks_D"))], tv)[0] == "failure"


def _em_moments(sch, times, a, b, steps):
    """Exact mean and variance ``(steps + 1, d)`` of the Euler--Maruyama chain of the linear
    score ``s(x, t_k) = a_k x + b_k`` (per coordinate) from the prior ``N(0, 1)``, float64."""
    m, v = np.zeros_like(a[0]), np.ones_like(a[0])
    ms, vs = [m], [v]
    for k in range(steps):
        t, h = times[k], times[k] - times[k + 1]
        g2 = float(sch.g2(t))
        c = 1.0 + h * (g2 * a[k] - float(sch.drift_coeff(t)))
        m, v = c * m + h * g2 * b[k], c * c * v + g2 * h
        ms.append(m)
        vs.append(v)
    return np.array(ms), np.array(vs)


def test_composition_budget_matches_the_closed_form_path_kl():
    """The discrete Girsanov budget in both directions against its closed form for two diagonal
    Gaussians (linear scores): the Euler--Maruyama chain's moments propagate exactly, and
    ``KL = sum_k (g_k^2 h_k / 2) E|a_k' x + b_k' - a_k x - b_k|^2`` under the chain of the first
    argument; the estimates agree within 4 standard errors and the directions differ."""
    import composition_jax as cj
    from composition_jax.experiments.learned_vector import composition_budget

    sch = cj.VPSchedule()
    laws = {"exact": (np.zeros(2), np.array([1.0, 0.25])),
            "learned": (np.array([1.0, -0.3]), np.array([4.0, 0.04]))}
    models = {k: cj.diffuse(cj.Gaussian(jnp.asarray(m, jnp.float32),
                                        jnp.diag(jnp.asarray(v, jnp.float32))), sch)
              for k, (m, v) in laws.items()}
    steps, t_min, n = 25, 1e-3, 4000
    times = np.asarray(cj.sample(jax.random.key(0), models["exact"], sch, (2, 2),
                                 method="euler_maruyama", steps=steps, t_min=t_min,
                                 grid="log_snr", denoise_final=False,
                                 return_info=True).info.times, np.float64)
    al = np.array([float(sch.alpha(t)) for t in times[:-1]])[:, None]
    sg = np.array([float(sch.sigma(t)) for t in times[:-1]])[:, None]
    lin = {k: (-1.0 / (al**2 * v + sg**2), al * m / (al**2 * v + sg**2))
           for k, (m, v) in laws.items()}
    da, db = lin["learned"][0] - lin["exact"][0], lin["learned"][1] - lin["exact"][1]
    w = np.array([0.5 * float(sch.g2(times[k])) * (times[k] - times[k + 1])
                  for k in range(steps)])[:, None]

    def path_kl(chain):
        m, v = _em_moments(sch, times, *lin[chain], steps)
        m, v = m[:-1], v[:-1]
        return float(np.sum(w * (da**2 * (v + m**2) + 2 * da * db * m + db**2)))

    want_f, want_r = path_kl("exact"), path_kl("learned")
    assert abs(want_f - want_r) > 0.2 * want_f  # the two directions are different numbers
    got = composition_budget(models["learned"], models["exact"], sch, key=jax.random.key(3),
                             dim=2, n=n, steps=steps, t_min=t_min, grid="log_snr")
    assert abs(got["kl"] - want_f) < 4 * got["kl_se"] and got["kl_se"] < 0.05 * want_f
    assert abs(got["kl_reverse"] - want_r) < 4 * got["kl_reverse_se"]
    assert got["kl_reverse_se"] < 0.05 * want_r
    assert got["kl_upper"] == pytest.approx(got["kl"] + 3 * got["kl_se"])
    tvs = [min(1.0, np.sqrt(u / 2), np.sqrt(1 - np.exp(-u)))
           for u in (got["kl_upper"], got["kl_reverse_upper"])]
    assert got["tv"] == pytest.approx(min(tvs)) and got["tv_reverse"] == pytest.approx(tvs[1])
    one_way = composition_budget(models["learned"], models["exact"], sch, key=jax.random.key(3),
                                 dim=2, n=n, steps=steps, t_min=t_min, grid="log_snr",
                                 reverse=False)
    assert "kl_reverse" not in one_way and one_way["kl"] == got["kl"]
    assert one_way["tv"] == pytest.approx(tvs[0])


def test_event_rule_reverse_direction():
    """``kl(P_L(E) || P_X(E))`` at the same nearest interval ends as the forward bound, much
    larger for an event rare under ``C[p]`` and common in the sample, and decisive only beyond
    its own budget ``KL(learned || exact)``."""
    from composition_jax.experiments.learned_vector import binary_kl, decide, event_kl_bound
    from composition_jax.zoo.rules import EFFECT_FLOORS

    f = EFFECT_FLOORS["max_ks_D"]
    kl, lo, _ = event_kl_bound(0.004, 600, 1000, f)
    kr, lo_r, _ = event_kl_bound(0.004, 600, 1000, f, reverse=True)
    assert lo_r == lo and kr == pytest.approx(binary_kl(lo, 0.004 + f)) and kr > 2 * kl
    _, _, hi = event_kl_bound(0.9, 100, 1000, f)
    assert event_kl_bound(0.9, 100, 1000, f, reverse=True)[0] == pytest.approx(
        binary_kl(hi, 0.9 - f))
    assert event_kl_bound(0.5, 500, 1000, f, reverse=True)[0] == 0.0
    ev = [{"name": "e", "p_exact": 0.004, "hits": 600, "n": 1000}]
    mat = _report(("ks", 1e-9, f + 0.01, "max_ks_D"))
    obs, _, dec = decide([mat], 0.5, events=ev, kl_budget=10.0, kl_budget_reverse=0.99 * kr)
    assert obs == "failure" and "kl(P_L || P_X)" in dec[0]
    obs, _, dec = decide([mat], 0.5, events=ev, kl_budget=10.0, kl_budget_reverse=1.01 * kr)
    assert obs == "inconclusive" and dec == []
    # the forward check still applies alongside
    assert decide([mat], 0.5, events=ev, kl_budget=0.99 * kl,
                  kl_budget_reverse=10.0)[0] == "failure"


def test_learned_vector_radius_event_rule():
    """The ring-collapse event rule: the disc probability equals the noncentral chi-square CDF
    (scipy), the binary-KL bound is the smallest kl over the two intervals (0 when they meet),
    and an event decides failure only beyond the path-KL budget and only with a material
    rejection already present."""
    from scipy.stats import ncx2

    import composition_jax as cj
    from composition_jax.experiments.learned_vector import (
        VectorConfig,
        any_disc_probability,
        binary_kl,
        decide,
        disc_probability,
        event_kl_bound,
        ring_tuple,
    )
    from composition_jax.zoo.rules import EFFECT_FLOORS

    cfg = VectorConfig.for_mode("quick")
    laws = ring_tuple(cfg)
    exact = cj.composed_distribution(laws["background"], [laws["p1"], laws["p2"]])
    v, R = cfg.std ** 2, cfg.radius
    for r in (0.5 * R, R, 2 * R):  # |x_B|^2 / v ~ ncx2(2, R^2 / v) on either block (one ring)
        want = ncx2.cdf(r * r / v, 2, R * R / v)
        for b in laws["blocks"]:
            assert abs(disc_probability(exact, b, r) - want) < 1e-6
    with pytest.raises(ValueError, match="isotropic"):
        disc_probability(cj.Gaussian(jnp.zeros(2), jnp.diag(jnp.array([1.0, 2.0]))), [0, 1], 1.0)
    # binary KL: closed values and the interval minimum
    assert binary_kl(0.5, 0.5) == 0.0 and binary_kl(0.0, 0.5) == pytest.approx(math.log(2))
    assert binary_kl(0.1, 0.6) == pytest.approx(0.1 * math.log(0.1 / 0.6)
                                                + 0.9 * math.log(0.9 / 0.4))
    f = EFFECT_FLOORS["max_ks_D"]
    kl, lo, hi = event_kl_bound(0.004, 600, 1000, f)
    assert kl == pytest.approx(binary_kl(0.004 + f, lo)) and 0.55 < lo < 0.6 < hi
    assert event_kl_bound(0.5, 500, 1000, f)[0] == 0.0
    kl_low, _, hi = event_kl_bound(0.9, 100, 1000, f)  # the other side: fewer hits than exact
    assert hi < 0.2 and kl_low == pytest.approx(binary_kl(0.9 - f, hi))
    ev = [{"name": "e", "p_exact": 0.004, "hits": 600, "n": 1000}]
    mat = _report(("ks", 1e-9, f + 0.01, "max_ks_D"))  # material, far within a TV budget 0.5
    assert decide([mat], 0.5, events=ev, kl_budget=0.99 * kl)[0] == "failure"
    obs, _, dec = decide([mat], 0.5, events=ev, kl_budget=1.01 * kl)
    assert obs == "inconclusive" and dec == []
    # no material rejection: an event never creates one
    assert decide([_report(("ks", 0.5, 0.3, "max_ks_D"))], 0.5, events=ev,
                  kl_budget=0.0)[0] == "success"
    with pytest.raises(ValueError, match="kl_budget"):
        decide([mat], 0.5, events=ev)
    # some block's ring collapsed: per component the blocks are independent (Monte Carlo check
    # on exact samples: within 4 binomial standard errors), and 1 - (1 - p)^2 for the product
    r = 0.5 * R
    p1 = disc_probability(exact, laws["blocks"][0], r)
    p_any = any_disc_probability(exact, laws["blocks"], r)
    assert p_any == pytest.approx(1 - (1 - p1) ** 2, rel=1e-6)
    r = 1.2  # a radius with mass enough for a Monte Carlo check
    p_any = any_disc_probability(exact, laws["blocks"], r)
    xs = np.asarray(exact.sample(jax.random.key(5), 200_000))
    hits = np.mean(np.minimum(np.linalg.norm(xs[:, :2], axis=1),
                              np.linalg.norm(xs[:, 2:], axis=1)) <= r)
    assert abs(hits - p_any) < 4 * np.sqrt(p_any * (1 - p_any) / len(xs))
    with pytest.raises(ValueError, match="covariance between blocks"):
        any_disc_probability(cj.Gaussian(jnp.zeros(4), jnp.eye(4) + 0.1 * jnp.ones((4, 4))),
                             laws["blocks"], 1.0)


@pytest.mark.parametrize("concurrent", [True, False])
def test_learned_experiments_run_side_by_side_in_order(monkeypatch, concurrent):
    """run_learned_experiments: the learned-vector experiment runs in a second thread
    (concurrent=True) or after the length-generalization one; the records come back in the same
    order either way, each experiment gets its mode's configuration and the cache argument, and
    an error in the second thread is raised in the caller."""
    import threading

    import composition_jax.experiments as ex
    import composition_jax.experiments.learned_vector as lv

    seen = {}

    def fake_length(cfg, cache):
        seen["length"] = (cfg.mode, cache, threading.current_thread() is threading.main_thread())
        return {"records": [{"name": "a"}, {"name": "b"}]}

    def fake_vector(cfg, cache):
        seen["vector"] = (cfg.mode, cache, threading.current_thread() is threading.main_thread())
        if cfg.mode == "full":
            raise FloatingPointError("boom")
        return {"records": [{"name": "c"}]}

    monkeypatch.setattr(ex, "run_length_generalization", fake_length)
    monkeypatch.setattr(lv, "run_learned_vector", fake_vector)
    recs = ex.run_learned_experiments(quick=True, out_dir=None, concurrent=concurrent)
    assert [r["name"] for r in recs] == ["a", "b", "c"]
    assert seen == {"length": ("quick", "default", True),
                    "vector": ("quick", "default", not concurrent)}
    with pytest.raises(FloatingPointError, match="boom"):
        ex.run_learned_experiments(quick=False, out_dir=None, concurrent=concurrent)


def test_reproduce_runs_the_learned_stage_beside_the_zoo(tmp_path, monkeypatch):
    """--learned starts the learned experiments in another thread before the zoo's scenarios
    (the zoo's scenario below only finishes once the learned stage has started); their records
    come after the zoo's; an error in the learned stage reaches the caller (exit code 3)."""
    import json
    import threading

    import composition_jax.experiments as ex
    from composition_jax.verify import scenarios as sc

    started = threading.Event()

    def cheap(cfg, key):
        assert started.wait(60), "the learned stage did not start beside the scenario"
        return sc.ScenarioResult("cheap", "a cheap scenario", "success", "success", {}, ["ok"])

    def fake(quick=True, out_dir=None):
        assert threading.current_thread() is not threading.main_thread()
        started.set()
        return _fake_records()

    monkeypatch.setitem(sc.SCENARIOS, "cheap", cheap)
    monkeypatch.setattr(ex, "run_learned_experiments", fake)
    out = tmp_path / "rep"
    assert _reproduce_cli(out, "--size", "quick", "--learned") == 0
    rep = json.loads((out / "report.json").read_text())
    assert [s["name"] for s in rep["scenarios"]] == [
        "cheap", "learned_length_empty", "learned_vector_empty"]

    def broken(quick=True, out_dir=None):
        started.set()
        raise FloatingPointError("learned stage failed")

    monkeypatch.setattr(ex, "run_learned_experiments", broken)
    assert _reproduce_cli(tmp_path / "rep2", "--size", "quick", "--learned") == 3
    assert not (tmp_path / "rep2").exists()


def test_zoo_scenarios_run_two_at_a_time_in_order():
    """report._run_scenarios: with 2 workers the first scenario is still running when the second
    starts (it waits for it), results come back in the order of the names; with 1 worker all
    run in the calling thread; an error in either thread reaches the caller."""
    import threading
    import types

    from composition_jax import report

    second_started = threading.Event()
    threads = {}

    def run_scenario(name, cfg):
        threads[name] = threading.current_thread().name
        if name == "b":
            second_started.set()
        if name == "a" and cfg == "two":
            assert second_started.wait(60), "the second scenario did not start beside the first"
        if name == "boom":
            raise FloatingPointError("scenario failed")
        return types.SimpleNamespace(name=name)

    sc = types.SimpleNamespace(run_scenario=run_scenario)
    names = ["a", "b", "c", "d", "e"]
    out = report._run_scenarios(sc, names, "two", None, False, workers=2)
    assert [r.name for r in out] == names
    assert threads["a"] != threads["b"] and len(set(threads.values())) == 2
    threads.clear()
    out = report._run_scenarios(sc, names, "one", None, False, workers=1)
    assert [r.name for r in out] == names
    assert set(threads.values()) == {threading.current_thread().name}
    for workers in (1, 2):
        threads.clear()
        with pytest.raises(FloatingPointError, match="scenario failed"):
            report._run_scenarios(sc, ["c", "boom", "d", "e"], "x", None, False, workers=workers)
        if workers == 1:  # no group starts after the error
            assert sorted(threads) == ["boom", "c"]


def test_zoo_scenarios_of_one_module_run_in_one_thread():
    """Scenarios defined in the same zoo module form one group (one thread, in order), so the
    second finds the first's compiled programs; the real zoo's groups are its modules."""
    import threading
    import types

    from composition_jax import report
    from composition_jax.verify import scenarios as real

    names = list(real.SCENARIOS)
    groups = report._scenario_groups(real, names)
    assert sorted(i for g in groups for i in g) == list(range(len(names)))
    for g in groups:
        assert len({real.SCENARIOS[names[i]].fn.__module__ for i in g}) == 1
    assert len(groups) == len({s.fn.__module__ for s in real.SCENARIOS.values()})

    def spec(mod):
        return types.SimpleNamespace(fn=types.SimpleNamespace(__module__=mod))

    threads = {}

    def run_scenario(name, cfg):
        threads[name] = threading.current_thread().name
        return types.SimpleNamespace(name=name)

    sc = types.SimpleNamespace(run_scenario=run_scenario, SCENARIOS={
        "a1": spec("m.a"), "b1": spec("m.b"), "a2": spec("m.a"), "b2": spec("m.b")})
    assert report._scenario_groups(sc, ["a1", "b1", "a2", "b2", "x"]) == [[0, 2], [1, 3], [4]]
    out = report._run_scenarios(sc, ["a1", "b1", "a2", "b2"], None, None, False, workers=2)
    assert [r.name for r in out] == ["a1", "b1", "a2", "b2"]
    assert threads["a1"] == threads["a2"] and threads["b1"] == threads["b2"]
