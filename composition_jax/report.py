"""``composition-jax reproduce``: run the scenario zoo and write ``report.md``, figures and
``report.json`` atomically.

Learned-model experiments (:func:`composition_jax.experiments.run_learned_experiments`: length
generalization on blob scenes, learned 4-D ring composition vs the exact one) are appended after
the zoo when ``learned`` is on: by default in ``full`` mode, off in ``quick`` (the zoo alone
fills the quick budget) and always off in ``minimal``. Their trained parameters live in the
experiments' cache (``$COMPOSITION_JAX_CACHE``, else ``$XDG_CACHE_HOME/composition_jax`` or
``~/.cache/composition_jax``), never in ``out``, so they
survive ``--force``.

Verdict status: a result *agrees* when observed == expected, is *inconclusive* when the
statistics could not decide (observed ``"inconclusive"``: an interval straddling its bound), and
is a *mismatch* when a definite observed verdict differs from the expected one. Only mismatches
make the run fail (exit code 1); inconclusive results are flagged in the summary, in the CLI
output and in ``report.json`` (``inconclusive``), never silently counted as agreement.

Output folder (:mod:`composition_jax._outputs`): the target is checked before any work (not
the current folder or its ancestors, not ``/`` or the home folder, a writable folder or a
creatable path); everything is written into a hidden staging folder, ``report.json`` last, and
only a finished run is moved into place (one atomic rename for a new folder). A manifest
(``.composition-jax-manifest.json``) lists what the run wrote: ``force`` replaces exactly the
outputs of the previous run and keeps every other file; a foreign file with the name of an
output is refused. An interrupted run (an exception, ``KeyboardInterrupt``, SIGTERM under the
command line) leaves the target as it was and no staging folder. An existing non-empty target
is refused without ``force``.
"""

from __future__ import annotations

import inspect
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._outputs import OutputError, OutputExists, Staging, check_target

__all__ = ["OutputError", "OutputExists", "check_out_dir", "environment", "expected_outputs",
           "learned_results", "reproduce", "scenario_catalog", "status"]

#: what to install for figures (every extra of pyproject.toml that has matplotlib: dev,
#: notebooks, bench)
FIGURES_HINT = 'pip install matplotlib, or pip install "composition-jax[dev]"'

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


def expected_outputs(names: Sequence[str]) -> set[str]:
    """File names a run over the scenarios ``names`` may write (learned experiments aside)."""
    out = {"report.md", "report.json", "composition_gap.png"}
    for n in names:
        out |= {f"{n}_heatmap.png", f"{n}_scatter.png", f"{n}_length.png"}
    return out


def check_out_dir(out: Path, force: bool, names: Sequence[str] = ()) -> None:
    """Raise :class:`OutputExists`/:class:`OutputError` when ``out`` cannot take a report (see
    :func:`composition_jax._outputs.check_target`)."""
    check_target(out, command="reproduce", force=force, outputs=expected_outputs(names))


def scenario_catalog() -> list[tuple[str, str, str]]:
    """``(name, expected outcome, one-line description)`` of every registered scenario: the
    registry's declared ``expected``/``description`` where the entry has them, else read from
    the function's docstring (``"... -> success"``; ``"?"`` when it does not say)."""
    from .verify import scenarios as sc

    rows = []
    for name, spec in sc.SCENARIOS.items():
        expected = getattr(spec, "expected", None)
        desc = getattr(spec, "description", None) or getattr(spec, "title", None)
        if expected is None or not desc:
            doc = inspect.getdoc(getattr(spec, "fn", spec)) or ""
            first = " ".join(doc.split("\n\n")[0].split()).replace("``", "")
            first = re.sub(r"^\([a-z]\d?\)\s*", "", first)
            head, _, tail = first.partition("->")
            m = re.search(r"\b(success|failure)\b", tail)
            expected = expected or (m.group(1) if m else "?")
            desc = desc or head.strip().rstrip(".:;,") or name
        rows.append((name, str(expected), " ".join(str(desc).split())))
    return rows


def _git_commit() -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of the git checkout the package runs from, ``(None, None)`` when it
    is not tracked by git (an installed wheel) or git is unavailable."""
    here = Path(__file__).resolve().parent

    def git(*args):
        return subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True,
                              timeout=3, check=False)

    try:
        if git("ls-files", "--error-unmatch", "__init__.py").returncode != 0:
            return None, None  # a git repository around an installed copy is not ours
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return None, None
        st = git("status", "--porcelain", "--untracked-files=no", "--", ".")
        dirty = bool(st.stdout.strip()) if st.returncode == 0 else None
        return head.stdout.strip() or None, dirty
    except (OSError, subprocess.SubprocessError):
        return None, None


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def environment() -> dict:
    import jax

    import composition_jax as cj

    commit, dirty = _git_commit()
    return {
        "composition_jax": cj.__version__,
        "git_commit": commit,
        "git_dirty": dirty,
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
              "experiments' cache (`$COMPOSITION_JAX_CACHE`, else `$XDG_CACHE_HOME/composition_jax` or "
              "`~/.cache/composition_jax`) when "
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
              learned: str = "off", figures: bool = True) -> str:
    from .verify.scenarios import ALPHA, EFFECT_FLOORS

    L = ["# composition_jax: reproduction of Bradley et al. (2025), synthetic findings", ""]
    L.append(f"Mode **{cfg.mode}** (n = {cfg.n} samples per sampler, {cfg.steps} steps, "
             f"grid `{cfg.grid}`, VP schedule, t_min = {cfg.t_min}); {len(results)} scenarios "
             f"in {seconds:.0f} s. **{_headline(results)}**")
    if not figures:
        L += ["", f"*Figures skipped: matplotlib is not installed ({FIGURES_HINT}).*"]
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
      force: replace the outputs of a previous run in ``out`` (listed in its manifest); other
        files in ``out`` are kept.
      only: scenario names of the zoo (default all); does not select learned experiments.
      progress: progress bar / lines on stderr.
      learned: append the learned-model experiments; ``None`` = on in ``full`` mode, off in
        ``quick``. Never run in ``minimal`` mode (recorded as skipped).

    Returns ``(exit_code, out_path)``: 1 when some definite observed verdict differs from the
    expected one (a *mismatch*), else 0; ``inconclusive`` results do not fail the run but are
    listed in the report. Raises :class:`OutputExists` for a non-empty ``out`` without
    ``force``, :class:`OutputError` for an unusable ``out`` (both before any work) and
    ``ValueError`` for an unknown scenario or mode. Without matplotlib the figures are skipped
    (said once on stderr and in ``report.md``).
    """
    from .verify import scenarios as sc

    names = list(sc.SCENARIOS) if not only else list(only)
    for n in names:
        if n not in sc.SCENARIOS:
            raise ValueError(f"unknown scenario {n!r}; valid: {', '.join(sc.SCENARIOS)}")
    cfg = sc.Config.for_mode(mode)
    target = check_target(out, command="reproduce", force=force,
                          outputs=expected_outputs(names))
    out = target.path
    if learned is None:
        learned = mode == "full"
    learned_state = "skipped" if (learned and mode == "minimal") else (
        "on" if learned else "off")
    figures = _has_matplotlib()
    if not figures:
        print(f"composition-jax reproduce: matplotlib is not installed: figures skipped "
              f"({FIGURES_HINT})", file=sys.stderr, flush=True)

    def draw(r, folder):
        return _figures(r, folder) if figures else []

    with Staging(target) as stage:
        tmp = stage.path
        t0 = time.perf_counter()
        bar = None
        if progress:
            try:
                from tqdm import tqdm

                bar = tqdm(total=len(names), desc="scenarios", unit="scn", file=sys.stderr)
            except ImportError:
                bar = None
        results, figs = [], {}
        try:
            for i, n in enumerate(names):
                if bar is not None:
                    bar.set_postfix_str(n)
                elif progress:
                    print(f"[{i + 1}/{len(names)}] {n}", file=sys.stderr, flush=True)
                r = sc.run_scenario(n, cfg)
                results.append(r)
                figs[n] = draw(r, tmp)
                if bar is not None:
                    bar.update(1)
        finally:  # also on an interrupt: the bar's last line comes before any message
            if bar is not None:
                bar.close()
        if learned_state == "on":
            if progress:
                print("learned-model experiments (training or cache, then sampling) ...",
                      file=sys.stderr, flush=True)
            for r in learned_results(quick=mode != "full"):
                results.append(r)
                figs[r.name] = draw(r, tmp)
        seconds = time.perf_counter() - t0
        env = environment()
        gap_fig = _gap_figure(results, tmp) if figures else None
        (tmp / "report.md").write_text(_markdown(results, cfg, env, figs, gap_fig, seconds,
                                                 learned_state, figures))
        st = {r.name: status(r) for r in results}
        payload = {
            "scenarios": [dict(r.to_dict(), status=st[r.name]) for r in results],
            "all_agree": all(r.agrees for r in results),
            "mismatches": [n for n, v in st.items() if v == "mismatch"],
            "inconclusive": [n for n, v in st.items() if v == "inconclusive"],
            "learned": learned_state,
            "figures": figures,
            "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
            "seconds": round(seconds, 2),
            "environment": env,
        }
        part = tmp / "report.json.part"
        part.write_text(json.dumps(_jsonable(payload), indent=1))
        os.replace(part, tmp / "report.json")  # written last inside the staging folder
        stage.commit(last="report.json")
    return (1 if payload["mismatches"] else 0), out
