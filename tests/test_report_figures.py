"""The report's figures say what they show: every axes of every figure ``reproduce`` writes has a
title and x/y labels, every colorbar a label, no legend sits on an axes' data area, and the
composition-gap figure draws identical curves once and marks zero curves instead of flooring
them. The figures are drawn from scenario results of the shapes the zoo produces (no sampling:
the default suite pays only for matplotlib); the laws the 2-D figures draw are checked against
the zoo's own scenario laws; the ``slow`` test renders a real minimal report.
"""

from __future__ import annotations

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

from composition_jax import report
from composition_jax.zoo._common import ScenarioResult

SAMPLERS = ("euler_maruyama", "ode_heun", "predictor_corrector")


def _rng():
    return np.random.default_rng(0)


def _heatmap_result(name="eq17_bayes_background", q=None):
    x = np.clip(_rng().normal(0.3, 0.2, (64, 8)), -0.2, 1.2)
    metrics = {"S": [0, 2, 4, 6],
               "samplers": {m: {"mean_on_S": 0.3, "mean_off_S": 0.01} for m in SAMPLERS}}
    if q is not None:
        metrics["q"] = q
    return ScenarioResult(name, "t", "failure", "failure", metrics, [],
                          {"heatmaps": {m: x for m in SAMPLERS}})


def _scatter_result(name, target=None, extra=()):
    z = _rng().normal(size=(300, 2)) + np.array([-1.5, 0.0])
    samplers = SAMPLERS + tuple(extra)
    metrics = {"samplers": {m: {"z_mean": [-1.5, 0.02]} for m in samplers}}
    plots = {"scatter": {m: z for m in samplers}}
    if name.startswith(("overlapping", "disjoint")):  # as the zoo's mask scenarios report
        metrics.update(target_mean=[-1.5, 0.0])
        plots["target"] = (np.array([-1.5, 0.0]), np.eye(2))
    else:
        plots["target"] = target
    return ScenarioResult(name, "t", "failure", "failure", metrics, [], plots)


def _length_result():
    rows = [1.0, 0.6, 0.2, 0.05, 0.0, 0.0, 0.0, 0.0]
    per_size = {str(k + 1): {m: {"frac_exact_count": r, "mean_on_S": 0.5}
                             for m in ("euler_maruyama", "ode_heun")}
                for k, r in enumerate(rows)}
    return ScenarioResult("length_generalization_bayes", "t", "failure", "failure",
                          {"per_size": per_size, "min_fraction": rows}, [], {"length": rows})


def _locality_result():
    """A learned record with ``metrics["score_locality"]`` as the length-generalization study
    writes it (an exact zero included: drawn as a note, not on the log axis)."""
    ts = [0.05, 0.2, 0.5, 0.9]

    def row(*v):
        return {"off_block_ratio": list(v), "se": [0.1 * x for x in v]}

    loc = {"t": ts, "S": [0, 1, 2], "n": 64,
           "learned": {"empty": row(0.02, 0.01, 0.004, 0.003), "bayes": row(0.3, 0.2, 0.02, 0.003),
                       "control": row(0.01, 0.005, 0.003, 0.003)},
           "exact": {"empty": row(0.0, 0.003, 1e-4, 1e-6), "bayes": row(0.2, 0.1, 0.01, 1e-5)},
           "verdict": {"observed": "success",
                       "per_t": [{"threshold": x, "local": True, "bayes_resolved": i} for x, i in
                                 zip([0.07, 0.04, 0.009, 0.003], [True, True, False, False])]}}
    return ScenarioResult("learned_length_empty", "t", "success", "success",
                          {"score_locality": loc}, [])


def _gap(v):
    ts = np.linspace(0.02, 0.98, 25)
    return {"composition_gap": {"available": True, "kind": "kl_exact", "ts": ts.tolist(),
                                "divergence": list(np.broadcast_to(v, ts.shape).astype(float))}}


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    """``{file name: Figure}`` of every figure the report draws for one result of each plot
    kind, captured at ``savefig`` (the figures are closed afterwards)."""
    from matplotlib.figure import Figure

    folder = tmp_path_factory.mktemp("figs")
    captured = {}
    orig = Figure.savefig

    def save(self, fname, *a, **k):
        captured[getattr(fname, "name", str(fname)).rsplit("/", 1)[-1]] = self
        return orig(self, fname, *a, **k)

    Figure.savefig = save
    try:
        results = [_heatmap_result(), _heatmap_result("eq18_clutter_background", q=0.5),
                   _scatter_result("overlapping_masks"),
                   _scatter_result("feature_shear", (np.array([2.0, 2.0]), 0.25 * np.eye(2)),
                                   extra=("annealed_mala", "annealed_hmc")),
                   _length_result(), _locality_result()]
        for r in results:
            report._figures(r, folder)
        gaps = [ScenarioResult(f"s{i}", "t", "success", "success", _gap(v), [])
                for i, v in enumerate([0.0, 0.0, 3e-8, 0.05, 0.05, 0.2])]
        gaps[3].metrics["composition_gap"]["divergence"][0] = 0.0  # a zero point on a curve
        gaps[4].metrics["composition_gap"]["divergence"][0] = 0.0
        assert report._gap_figure(gaps, folder) == "composition_gap.png"
    finally:
        Figure.savefig = orig
    return captured


def test_every_plot_kind_is_drawn(figures):
    assert set(figures) == {
        "eq17_bayes_background_heatmap.png", "eq18_clutter_background_heatmap.png",
        "overlapping_masks_scatter.png", "overlapping_masks_marginals.png",
        "feature_shear_scatter.png", "feature_shear_marginals.png",
        "length_generalization_bayes_length.png", "composition_gap.png",
        "learned_length_empty_locality.png"}
    assert set(figures) - {"composition_gap.png", "learned_length_empty_locality.png"} <= \
        report.expected_outputs(
        ["eq17_bayes_background", "eq18_clutter_background", "overlapping_masks",
         "feature_shear", "length_generalization_bayes"])


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_every_axes_titled_and_labelled(figures):
    bad = []
    for fn, fig in figures.items():
        for ax in fig.axes:
            if hasattr(ax, "_colorbar"):
                if not (ax.get_ylabel() or ax.get_xlabel()):
                    bad.append(f"{fn}: colorbar without a label")
                continue
            for what, text in (("title", ax.get_title()), ("x label", ax.get_xlabel()),
                               ("y label", ax.get_ylabel())):
                if not text.strip():
                    bad.append(f"{fn}: axes {ax.get_title()!r} has no {what}")
    assert not bad, "\n".join(bad)


def test_legends_off_the_data_and_titles_apart(figures):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    bad = []
    for fn, fig in figures.items():
        renderer = FigureCanvasAgg(fig).get_renderer()  # the figure was closed after saving
        fig.draw(renderer)
        boxes = [ax.get_window_extent(renderer) for ax in fig.axes]
        for ax in fig.axes:
            leg = ax.get_legend()
            if leg is not None:
                lb = leg.get_window_extent(renderer)
                bad += [f"{fn}: a legend covers an axes' data area"
                        for b in boxes if _overlaps(lb, b)]
        # titles, axis labels, legends and the figure title: no two overlap, and no axis
        # label or legend lies on another axes' data area
        texts = []
        for k, ax in enumerate(fig.axes):
            for what, t in (("title", ax.title), ("x label", ax.xaxis.label),
                            ("y label", ax.yaxis.label)):
                if t.get_text():
                    texts.append((k, f"axes {k} {what} {t.get_text()[:30]!r}",
                                  t.get_window_extent(renderer)))
            if ax.get_legend() is not None:
                texts.append((k, f"axes {k} legend", ax.get_legend().get_window_extent(renderer)))
        if fig._suptitle is not None:
            texts.append((-1, "figure title", fig._suptitle.get_window_extent(renderer)))
        for i, (ka, na, a) in enumerate(texts):
            bad += [f"{fn}: {na} overlaps {nb}" for _, nb, b in texts[i + 1:] if _overlaps(a, b)]
            bad += [f"{fn}: {na} lies on axes {k}'s data area" for k, b in enumerate(boxes)
                    if k != ka and not hasattr(fig.axes[k], "_colorbar") and _overlaps(a, b)]
    assert not bad, "\n".join(sorted(set(bad)))


def test_heatmap_marks_S_and_its_projective_target(figures):
    fig = figures["eq17_bayes_background_heatmap.png"]
    ax = fig.axes[0]
    red = [t.get_text() for t in ax.get_xticklabels() if t.get_color() == report.TARGET_COLOR]
    assert red == ["0", "2", "4", "6"]
    means = fig.axes[3]  # three heatmaps, then the means panel (the colorbar comes last)
    ys = sorted(float(line.get_ydata()[0]) for line in means.get_lines()
                if line.get_color() == report.TARGET_COLOR)
    assert ys == [0.0, 1.0]  # eq. (17): 1 on S, empty (0) off S
    ys18 = sorted(float(line.get_ydata()[0]) for line in figures[
        "eq18_clutter_background_heatmap.png"].axes[3].get_lines()
        if line.get_color() == report.TARGET_COLOR)
    assert ys18 == [0.5, 1.0]  # eq. (18): 1 on S, clutter rate q off S


def test_overlapping_masks_draw_no_projective_target(figures):
    """Overlapping masks have no projective target: nothing red; the experts' conflicting x0
    marginals and the composed law are drawn and named."""
    fig = figures["overlapping_masks_marginals.png"]
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert any(s.startswith("expert p_1 marginal N(-2, 1)") for s in labels), labels
    assert any(s.startswith("expert p_2 marginal N(2, 4)") for s in labels), labels
    assert any(s.startswith("exact C[p] marginal") for s in labels), labels
    assert not any("projective target" in s for s in labels), labels
    sc = figures["overlapping_masks_scatter.png"]
    assert "no projective target" in sc._suptitle.get_text()
    shear = [line.get_label() for line in figures["feature_shear_marginals.png"].axes[0].get_lines()]
    assert "projective target N(2, 0.25)" in shear, shear


def test_mean_error_panel_is_standardized_against_the_experts(tmp_path):
    """The bars are (sample mean - expert mean) / expert sd per expert coordinate: p_1's x[0]
    (mean -2, sd 1) and p_2's x[0] (mean 2, sd 2) and x[1] (mean 0, sd 1)."""
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    captured = {}
    orig = Figure.savefig

    def save(self, fname, *a, **k):
        captured[str(fname).rsplit("/", 1)[-1]] = self

    Figure.savefig = save
    try:
        report._figures(_scatter_result("overlapping_masks"), tmp_path)
    finally:
        Figure.savefig = orig
    ax = captured["overlapping_masks_marginals.png"].axes[2]
    got = np.array([[b.get_height() for b in c] for c in ax.containers])
    want = np.array([(-1.5 + 2) / 1, (-1.5 - 2) / 2, (0.02 - 0) / 1])
    assert got.shape == (len(SAMPLERS), 3)
    np.testing.assert_allclose(got, np.broadcast_to(want, got.shape), rtol=1e-12)
    plt.close("all")


def test_locality_figure_draws_the_study(figures):
    """Exact ratios on a log axis (exact zeros named, not drawn), learned ratios with the
    control and the threshold per t."""
    exact, learned = figures["learned_length_empty_locality.png"].axes
    assert exact.get_yscale() == "log"
    labels = [t.get_text() for t in exact.get_legend().get_texts()]
    assert any("exactly 0 at some t" in s and "empty background" in s for s in labels), labels
    labels = [t.get_text() for t in learned.get_legend().get_texts()]
    assert {"empty background", "Bayes (p_u background)"} <= set(labels), labels
    thr = [ln for ln in learned.get_lines() if ln.get_label().startswith("locality threshold")]
    assert len(thr) == 1 and list(thr[0].get_ydata()) == [0.07, 0.04, 0.009, 0.003]


def test_gap_figure_groups_identical_curves_and_marks_zeros(figures):
    fig = figures["composition_gap.png"]
    ax = fig.axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["s3 = s4", "s5"], labels  # the two identical curves drawn once
    ys = ax.get_lines()[0].get_ydata()
    assert np.isnan(ys[0]) and np.all(ys[1:] == 0.05)  # a zero point left out, not floored
    note = " ".join(t.get_text() for t in ax.texts).replace("\n", " ")
    assert "exact zero at every t: s0, s1" in note
    assert "zero up to float rounding (< 1e-06) at every t: s2" in note


def test_2d_figure_laws_are_the_zoos_laws(monkeypatch):
    """``report.EXPERTS_2D`` (what the 2-D figures draw) composes to the law each scenario
    itself reports: the mask scenarios' ``C[p]`` (captured before any sampling) and the
    feature-space scenarios' z-space target."""
    import jax

    import composition_jax as cj
    from composition_jax.zoo import feature, masks

    class Stop(Exception):
        pass

    for name, fn in (("overlapping_masks", masks.overlapping), ("disjoint_masks", masks.disjoint)):
        seen = {}

        def capture(cfg, key, bg, conds, msk, seen=seen, **kw):
            seen.update(bg=bg, conds=conds, masks=msk)
            raise Stop

        monkeypatch.setattr(masks, "two_d", capture)
        with pytest.raises(Stop):
            fn(cj.verify.scenarios.Config.for_mode("minimal"), jax.random.key(0))
        spec = report.EXPERTS_2D[name]
        bm, bv = spec["background"]
        np.testing.assert_allclose(seen["bg"].mean, bm)
        np.testing.assert_allclose(np.diag(seen["bg"].cov), bv)
        assert [e[1] for e in spec["experts"]] == [list(m) for m in seen["masks"]]
        for (_, _, m, v), c in zip(spec["experts"], seen["conds"]):
            np.testing.assert_allclose(c.mean, m)
            np.testing.assert_allclose(c.cov, np.diag(v))
    zb, zc = feature._z_tuple()
    for w in feature.TRANSFORMS:
        spec = report.EXPERTS_2D[f"feature_{w}"]
        np.testing.assert_allclose(zb.mean, spec["background"][0])
        np.testing.assert_allclose(np.diag(zb.cov), spec["background"][1])
        for (_, block, m, v), c in zip(spec["experts"], zc):
            np.testing.assert_allclose(c.mean, m)
            np.testing.assert_allclose(c.cov, np.diag(v))
        target = report._projective_target_2d(spec)
        comp = cj.composed_distribution(zb, zc)  # FC in z: C[p] is the projective target
        np.testing.assert_allclose([t[0] for t in target], comp.mean, atol=1e-6)
        np.testing.assert_allclose([t[1] for t in target], np.diag(comp.cov), atol=1e-6)
    assert report._projective_target_2d(report.EXPERTS_2D["overlapping_masks"]) is None


@pytest.mark.slow
def test_real_minimal_report_figures(tmp_path):
    """The figures of a real minimal run (one scenario of each plot kind) pass the same checks."""
    from matplotlib.figure import Figure

    captured = {}
    orig = Figure.savefig

    def save(self, fname, *a, **k):
        captured[str(fname).rsplit("/", 1)[-1]] = self
        return orig(self, fname, *a, **k)

    Figure.savefig = save
    try:
        report.reproduce(tmp_path / "out", mode="minimal", progress=False,
                         only=["eq17_bayes_background", "overlapping_masks", "disjoint_masks",
                               "feature_shear", "length_generalization_bayes"])
    finally:
        Figure.savefig = orig
    assert len(captured) == 9, sorted(captured)
    test_every_axes_titled_and_labelled(captured)
    test_legends_off_the_data_and_titles_apart(captured)
