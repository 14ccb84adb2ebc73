"""``composition-jax reproduce``: run the scenario zoo and write ``report.md``, figures and
``report.json`` atomically.

Learned-model experiments (:func:`composition_jax.experiments.run_learned_experiments`: length
generalization on blob scenes, learned 4-D ring composition vs the exact one) are appended after
the zoo when ``learned`` is on: by default in ``full`` mode, off in ``quick`` (the zoo alone
fills the quick budget) and always off in ``minimal``. Their trained parameters live in the
experiments' cache (``$COMPOSITION_JAX_CACHE`` or a temporary folder), never in ``out``, so they
survive ``--force``.

Verdict status: a result *agrees* when observed == expected, is *inconclusive* when the
statistics could not decide (observed ``"inconclusive"``: an interval straddling its bound), and
is a *mismatch* when a definite observed verdict differs from the expected one. Only mismatches
make the run fail (exit code 1); inconclusive results are flagged in the summary, in the CLI
output and in ``report.json`` (``inconclusive``), never silently counted as agreement.

Atomicity: everything is written into a fresh temporary folder next to the target
(``.<name>.tmp-XXXX``), ``report.json`` last; only when the run finished is the folder renamed
onto the target (an existing target, allowed by ``force``, is first renamed aside and deleted
after the swap). An interrupted run leaves at most a hidden temporary folder, never a target
that looks complete. An existing non-empty target is refused without ``force``.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["check_out_dir", "environment", "learned_results", "reproduce", "status"]

INCONCLUSIVE = "inconclusive"


def status(r) -> str:
    """``"agrees"``, ``"inconclusive"`` (observed ``"inconclusive"``) or ``"mismatch"``."""
    if r.expected == r.observed:
        return "agrees"
    if r.observed == INCONCLUSIVE:
        return "inconclusive"
    return "mismatch"


def learned_results(quick: bool) -> list:
    """Run :func:`composition_jax.experiments.run_learned_experiments` and wrap each record in a
    :class:`~composition_jax.verify.scenarios.ScenarioResult` (``seconds`` = the wall time of the
    whole learned stage, split evenly; the records carry their own training/sampling times).

    ``out_dir=None``: parameters are cached in the experiments' cache folder, not in the report
    folder, so ``--force`` does not throw them away."""
    from .experiments import run_learned_experiments
    from .verify.scenarios import ScenarioResult

    t0 = time.perf_counter()
    recs = run_learned_experiments(quick=quick, out_dir=None)
    each = (time.perf_counter() - t0) / max(1, len(recs))
    return [ScenarioResult(name=r["name"], title=r["title"], expected=r["expected"],
                           observed=r["observed"], metrics=r["metrics"],
                           reasons=list(r["reasons"]), seconds=each) for r in recs]


class OutputExists(Exception):
    """The output folder exists and is not empty (and ``force`` is off)."""


def check_out_dir(out: Path, force: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise OutputExists(
            f"output folder {out} exists and is not empty; use --force to overwrite")


def environment() -> dict:
    import jax

    import composition_jax as cj

    return {
        "composition_jax": cj.__version__,
        "jax": jax.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "devices": [str(d) for d in jax.devices()],
        "x64": bool(jax.config.read("jax_enable_x64")),
        "cpu_count": os.cpu_count(),
    }


def _jsonable(o: Any) -> Any:
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, (np.floating, float)):
        v = float(o)
        return v if np.isfinite(v) else str(v)
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return _jsonable(o.tolist())
    return o


# ------------------------------------------------------------------------------ figures
def _figures(res, folder: Path) -> list[str]:
    """Write this scenario's PNGs; returns their file names (empty without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    names = []
    p = res.plots
    if "heatmaps" in p:
        hm = p["heatmaps"]
        fig, axes = plt.subplots(1, len(hm), figsize=(3.2 * len(hm), 3.6), squeeze=False)
        for ax, (m, x) in zip(axes[0], hm.items()):
            im = ax.imshow(x, aspect="auto", cmap="viridis", vmin=-0.2, vmax=1.2,
                           interpolation="nearest")
            ax.set_title(m, fontsize=9)
            ax.set_xlabel("coordinate")
            ax.set_xticks(range(x.shape[1]))
        axes[0][0].set_ylabel("sample")
        fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
        fig.suptitle(f"{res.name}: samples per coordinate", fontsize=10)
        fn = f"{res.name}_heatmap.png"
        fig.savefig(folder / fn, dpi=90)
        plt.close(fig)
        names.append(fn)
    if "scatter" in p:
        sc = p["scatter"]
        fig, axes = plt.subplots(1, len(sc), figsize=(3.0 * len(sc), 3.2), squeeze=False)
        mean, cov = p.get("target", (None, None))
        for ax, (m, z) in zip(axes[0], sc.items()):
            ax.scatter(z[:, 0], z[:, 1], s=2, alpha=0.3)
            if mean is not None:
                g = np.linspace(-4, 4, 121)
                X, Y = np.meshgrid(g + mean[0], g + mean[1])
                P = np.linalg.inv(cov)
                dx, dy = X - mean[0], Y - mean[1]
                q = P[0, 0] * dx * dx + 2 * P[0, 1] * dx * dy + P[1, 1] * dy * dy
                ax.contour(X, Y, q, levels=[1.0, 4.0, 9.0], colors="r", linewidths=0.8)
                ax.set_xlim(mean[0] - 3.5, mean[0] + 3.5)
                ax.set_ylim(mean[1] - 3.5, mean[1] + 3.5)
            ax.set_title(m, fontsize=9)
        fig.suptitle(f"{res.name}: samples (feature space z) vs projective target (red: 1,2,3 sd)",
                     fontsize=9)
        fn = f"{res.name}_scatter.png"
        fig.savefig(folder / fn, dpi=90)
        plt.close(fig)
        names.append(fn)
    if "length" in p:
        fig, ax = plt.subplots(figsize=(4, 3))
        ax.plot(range(1, len(p["length"]) + 1), p["length"], "o-")
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("|S| composed")
        ax.set_ylabel("fraction with exactly |S| active")
        ax.set_title(res.name, fontsize=9)
        fig.tight_layout()
        fn = f"{res.name}_length.png"
        fig.savefig(folder / fn, dpi=90)
        plt.close(fig)
        names.append(fn)
    return names


def _gap_figure(results, folder: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    curves = []
    for r in results:
        g = r.metrics.get("composition_gap")
        if isinstance(g, dict) and g.get("available") and g.get("kind") == "kl_exact":
            curves.append((r.name, g["ts"], g["divergence"]))
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for name, ts, v in curves:
        ax.plot(ts, np.maximum(np.asarray(v, float), 1e-12), label=name)
    ax.set_yscale("log")
    ax.set_xlabel("t (VP schedule)")
    ax.set_ylabel("KL(N_t[C[p]] || C[p^t])  (floored at 1e-12)")
    ax.legend(fontsize=7)
    ax.set_title("composition gap vs t (exact, Gaussian tuples)", fontsize=9)
    fig.tight_layout()
    fn = "composition_gap.png"
    fig.savefig(folder / fn, dpi=90)
    plt.close(fig)
    return fn


# ------------------------------------------------------------------------------ markdown
def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _headline(results) -> str:
    st = [status(r) for r in results]
    mism = [r.name for r, s in zip(results, st) if s == "mismatch"]
    inc = [r.name for r, s in zip(results, st) if s == "inconclusive"]
    if mism:
        h = "SOME OBSERVED VERDICTS DIFFER FROM THE EXPECTED ONES: " + ", ".join(mism) + "."
    elif inc:
        h = "No observed verdict contradicts the expected one."
    else:
        h = "All observed verdicts equal the expected ones."
    if inc:
        h += (" INCONCLUSIVE (the statistics could not decide at this size; not counted as "
              "agreement): " + ", ".join(inc) + ".")
    return h


def _learned_note(learned: str) -> list[str]:
    return ["", "## Learned-model experiments", "", {
        "on": "Included (length generalization on blob scenes, configurations A/B/C; learned "
              "4-D ring composition vs the exact composition); trained parameters come from the "
              "experiments' cache (`$COMPOSITION_JAX_CACHE` or a temporary folder) when "
              "present. Their verdicts are computed from the samples (Wilson intervals / the "
              "zoo's projective decision rule, with a model-error control for the learned "
              "ring models); a verdict the statistics cannot settle at this size is reported "
              "as `inconclusive` and flagged, not counted as agreement (in quick mode this is "
              "expected for the ring composition over the empty background, whose training "
              "error is of the size of the effect floors, and for configuration C).",
        "off": "Not run (default in quick mode: the scenario zoo alone fills the quick budget; "
               "pass `--learned` to add them, about 3.5 extra minutes on 2 cores with an empty "
               "parameter cache, or use full mode, where they run by default).",
        "skipped": "Not run: the minimal size is for tests only.",
    }[learned]]


def _markdown(results, cfg, env, figs: dict, gap_fig: str | None, seconds: float,
              learned: str = "off") -> str:
    from .verify.scenarios import ALPHA, EFFECT_FLOORS

    L = ["# composition_jax: reproduction of Bradley et al. (2025), synthetic findings", ""]
    L.append(f"Mode **{cfg.mode}** (n = {cfg.n} samples per sampler, {cfg.steps} steps, "
             f"grid `{cfg.grid}`, VP schedule, t_min = {cfg.t_min}); {len(results)} scenarios "
             f"in {seconds:.0f} s. **{_headline(results)}**")
    L += ["", "## Decision rule", "",
          f"A sampler's output is *projective* when no test of `cj.verify.projective` at "
          f"family-wise level alpha = {ALPHA} (Bonferroni over all tests) rejects with an effect "
          "size above its floor: " + ", ".join(f"`{k}` > {v}" for k, v in EFFECT_FLOORS.items())
          + ". The floors keep discretization bias (measured exactly with `sampler_law` for "
          "Gaussians, well under 0.1 sd) from counting as a failure at large n, and are far "
          "below every effect the theory predicts for failures. A scenario is observed "
          "`success` when every standard sampler (euler_maruyama, ode_heun, "
          "predictor_corrector) is projective; scenario-specific criteria are stated in the "
          "reasons.", "", "## Summary", "",
          "| scenario | expected | observed | agrees | FC holds | max abs cosine | time (s) |",
          "|---|---|---|---|---|---|---|"]
    for r in results:
        fc = r.metrics.get("factorized_conditionals", r.metrics.get("factorized_conditionals_z"))
        fch = "" if fc is None else str(fc["holds"])
        h = r.metrics.get("heuristic", r.metrics.get("heuristic_x"))
        hc = "" if h is None else f"{h['max_abs_offdiag']:.3f}"
        ag = {"agrees": "yes", "inconclusive": "*inconclusive*", "mismatch": "**NO**"}[status(r)]
        L.append(f"| {r.name} | {r.expected} | {r.observed} | "
                 f"{ag} | {fch} | {hc} | {r.seconds:.1f} |")
    L += _learned_note(learned)
    if gap_fig:
        L += ["", "## Composition gap", "", f"![composition gap]({gap_fig})"]
    for r in results:
        L += ["", f"## {r.name}: {r.title}", "",
              f"Expected **{r.expected}**, observed **{r.observed}**.", "", "Reasons:", ""]
        L += [f"- {x}" for x in r.reasons]
        sam = r.metrics.get("samplers")
        if sam:
            keys = ["projective_passed", "material_rejections", "mean_on_S", "mean_off_S",
                    "frac_exact_count", "frac_active_off_S", "z_mean", "mean", "var",
                    "matches_tilted_target", "worst_effects"]
            cols = [k for k in keys if any(k in v for v in sam.values())]
            L += ["", "| sampler | " + " | ".join(cols) + " |",
                  "|---|" + "---|" * len(cols)]
            for m, v in sam.items():
                L.append(f"| {m} | " + " | ".join(_fmt(v.get(k, "")) for k in cols) + " |")
        if "per_size" in r.metrics:
            L += ["", "| |S| | " + " | ".join(
                next(iter(r.metrics["per_size"].values())).keys()) + " |", "|---|---|---|"]
            for size, v in r.metrics["per_size"].items():
                L.append(f"| {size} | " + " | ".join(
                    f"exact {x['frac_exact_count']:.3f}, mean on S {x['mean_on_S']:.3f}"
                    for x in v.values()) + " |")
        if isinstance(r.metrics.get("per_k"), dict):
            L += ["", "| k | exact count | all requested | mean extra off S | verdict |",
                  "|---|---|---|---|---|"]
            pv = r.metrics.get("per_k_verdict", {})
            for k, v in r.metrics["per_k"].items():
                L.append(f"| {k} | {v['exact']['fraction']:.3f} ± {v['exact']['se']:.3f} | "
                         f"{v['all_requested']['fraction']:.3f} ± "
                         f"{v['all_requested']['se']:.3f} | {v['mean_extra_off_S']:.2f} | "
                         f"{pv.get(k, '(not checked)')} |")
        for fn in figs.get(r.name, []):
            L += ["", f"![{fn}]({fn})"]
    L += ["", "## Environment", "", "```", json.dumps(env, indent=1), "```", ""]
    return "\n".join(L)


# ------------------------------------------------------------------------------ driver
def reproduce(out: str | os.PathLike, *, mode: str = "quick", force: bool = False,
              only: Sequence[str] | None = None, progress: bool = True,
              learned: bool | None = None) -> tuple[int, Path]:
    """Run the zoo (and the learned-model experiments) and write the report into ``out``
    atomically.

    Args:
      out: the report folder.
      mode: ``"minimal"`` (tests), ``"quick"`` or ``"full"``.
      force: replace a non-empty ``out``.
      only: scenario names of the zoo (default all); does not select learned experiments.
      progress: progress bar / lines on stderr.
      learned: append the learned-model experiments; ``None`` = on in ``full`` mode, off in
        ``quick``. Never run in ``minimal`` mode (recorded as skipped).

    Returns ``(exit_code, out_path)``: 1 when some definite observed verdict differs from the
    expected one (a *mismatch*), else 0; ``inconclusive`` results do not fail the run but are
    listed in the report. Raises :class:`OutputExists` for a non-empty ``out`` without ``force``.
    """
    from .verify import scenarios as sc

    out = Path(out)
    check_out_dir(out, force)
    names = list(sc.SCENARIOS) if not only else list(only)
    for n in names:
        if n not in sc.SCENARIOS:
            raise ValueError(f"unknown scenario {n!r}; valid: {', '.join(sc.SCENARIOS)}")
    cfg = sc.Config.for_mode(mode)
    if learned is None:
        learned = mode == "full"
    learned_state = "skipped" if (learned and mode == "minimal") else (
        "on" if learned else "off")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        t0 = time.perf_counter()
        bar = None
        if progress:
            try:
                from tqdm import tqdm

                bar = tqdm(total=len(names), desc="scenarios", unit="scn", file=sys.stderr)
            except ImportError:
                bar = None
        results, figs = [], {}
        for i, n in enumerate(names):
            if bar is not None:
                bar.set_postfix_str(n)
            elif progress:
                print(f"[{i + 1}/{len(names)}] {n}", file=sys.stderr, flush=True)
            r = sc.run_scenario(n, cfg)
            results.append(r)
            figs[n] = _figures(r, tmp)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        if learned_state == "on":
            if progress:
                print("learned-model experiments (training or cache, then sampling) ...",
                      file=sys.stderr, flush=True)
            for r in learned_results(quick=mode != "full"):
                results.append(r)
                figs[r.name] = _figures(r, tmp)
        seconds = time.perf_counter() - t0
        env = environment()
        gap_fig = _gap_figure(results, tmp)
        (tmp / "report.md").write_text(_markdown(results, cfg, env, figs, gap_fig, seconds,
                                                    learned_state))
        st = {r.name: status(r) for r in results}
        payload = {
            "scenarios": [dict(r.to_dict(), status=st[r.name]) for r in results],
            "all_agree": all(r.agrees for r in results),
            "mismatches": [n for n, v in st.items() if v == "mismatch"],
            "inconclusive": [n for n, v in st.items() if v == "inconclusive"],
            "learned": learned_state,
            "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
            "seconds": round(seconds, 2),
            "environment": env,
        }
        part = tmp / "report.json.part"
        part.write_text(json.dumps(_jsonable(payload), indent=1))
        os.replace(part, tmp / "report.json")  # written last inside the temporary folder
        # swap the finished folder into place
        old = None
        if out.exists():
            check_out_dir(out, force)  # re-check: something may have appeared meanwhile
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "x")
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return (1 if payload["mismatches"] else 0), out
