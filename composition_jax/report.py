"""``composition-jax reproduce``: run the scenario zoo and write ``report.md``, figures and
``report.json`` atomically.

Learned-model experiments (:func:`composition_jax.experiments.run_learned_experiments`: length
generalization on blob scenes, learned 4-D ring composition vs the exact one) run in a thread
beside the zoo's scenarios (which run two at a time, :func:`_run_scenarios`) and their records
are appended after the zoo's when ``learned`` is on: by default in ``full`` mode, off in
``quick`` (the zoo alone fills the quick budget) and always off in ``minimal``. Their trained parameters live in the
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
from ._threads import beside

#: Measured extra run time of the learned experiments in quick mode, stated by ``reproduce
#: --help`` (cli.py) and by the report when they were not run; re-measure when their sizes change.
LEARNED_QUICK_RUNTIME = (
    "about 3.5 extra minutes on 2 cores with empty caches (the learned experiments run beside the "
    "zoo's scenarios; measured on 2026-12-02: the quick zoo alone 230 s, with --learned 431 s); "
    "with one cheap scenario, --only weights_w1: 283 s with empty caches, 139 s on a rerun whose "
    "parameters and compiled programs come from the caches (the compilation cache is on by "
    "default, --no-compile-cache)")

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


def _scenario_groups(sc: Any, names: Sequence[str]) -> list[list[int]]:
    """Indices of ``names`` grouped by the zoo module that defines each scenario (in order of
    first appearance): scenarios of one module build the same laws and programs, so they run
    one after another in one thread (the second then finds the first's compiled programs; two
    started side by side would both compile them). A name without a module is its own group."""
    groups: dict = {}
    for i, n in enumerate(names):
        spec = getattr(sc, "SCENARIOS", {}).get(n)
        mod = getattr(getattr(spec, "fn", None), "__module__", None)
        groups.setdefault(mod or ("", n), []).append(i)
    return list(groups.values())


def _run_scenarios(sc: Any, names: Sequence[str], cfg: Any, bar: Any, progress: bool,
                   workers: int | None = None) -> list:
    """``sc.run_scenario(n, cfg)`` for every name, returned in the order of ``names``, by
    ``workers`` threads (default: 2 on a machine with 2 or more cores, else 1): the calling
    thread and daemon threads of :func:`composition_jax._threads.beside` each take the next
    group of :func:`_scenario_groups` not yet started. A scenario is a chain of tracing,
    single-threaded XLA compilations and programs that keeps about 1.4 of 2 cores busy, so two
    side by side fill the cores. Every key is fixed, so the results do not depend on the
    number of threads. After an error no thread starts another group; the error is raised in
    the caller (the calling thread's own, else the first other thread's)."""
    import itertools
    import threading

    if workers is None:
        workers = 2 if (os.cpu_count() or 1) >= 2 else 1
    groups = _scenario_groups(sc, names)
    out: list = [None] * len(names)
    order = itertools.count()
    lock = threading.Lock()
    failed = threading.Event()

    def work():
        try:
            run_groups()
        except BaseException:
            failed.set()
            raise

    def run_groups():
        while not failed.is_set():
            with lock:
                g = next(order)
            if g >= len(groups):
                return
            for i in groups[g]:
                if bar is not None:
                    bar.set_postfix_str(names[i])
                elif progress:
                    print(f"[{i + 1}/{len(names)}] {names[i]}", file=sys.stderr, flush=True)
                out[i] = sc.run_scenario(names[i], cfg)
                if bar is not None:
                    bar.update(1)

    joins = [beside(work, f"scenarios-{k}") for k in range(1, workers)]
    work()
    for join in joins:
        join()
    return out


def expected_outputs(names: Sequence[str]) -> set[str]:
    """File names a run over the scenarios ``names`` may write (learned experiments aside)."""
    out = {"report.md", "report.json", "composition_gap.png"}
    for n in names:
        out |= {f"{n}_heatmap.png", f"{n}_scatter.png", f"{n}_marginals.png",
                f"{n}_length.png"}
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
        # JAX's persistent compilation cache (None: off); compiled programs, not results
        "compilation_cache": jax.config.jax_compilation_cache_dir or None,
        # XLA's flags of this run (other flags change results by rounding)
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
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
# Colours: red is the projective target (Definition 4.1: every block has its expert's law); the
# exact t = 0 composition C[p] is black and dashed; experts' marginals that conflict (no
# projective target exists) get their own colours; samplers the matplotlib cycle.
TARGET_COLOR = "tab:red"
COMPOSED_STYLE = {"color": "k", "ls": "--"}
EXPERT_COLORS = ("tab:orange", "tab:purple", "tab:brown")

#: The 2-D scenarios' laws as the report plots them, in the coordinates of the projective test
#: (``x`` for the mask scenarios, ``z = A x`` for the feature-space ones): the background
#: ``(mean, variances)`` and each expert as ``(label, block, mean, variances)``. They are the
#: zoo's own laws (``cj.zoo.masks``, ``cj.zoo.feature``); tests/test_report_figures.py checks
#: that their exact composition equals the law each scenario reports.
EXPERTS_2D: dict[str, dict] = {
    "overlapping_masks": {
        "coords": "x", "background": ([0.0, 0.0], [4.0, 4.0]),
        "experts": [("p_1", [0], [-2.0, 0.0], [1.0, 4.0]),
                    ("p_2", [0, 1], [2.0, 0.0], [4.0, 1.0])]},
    "disjoint_masks": {
        "coords": "x", "background": ([0.0, 0.0], [4.0, 4.0]),
        "experts": [("p_1", [0], [-2.0, 0.0], [1.0, 4.0]),
                    ("p_2", [1], [0.0, 2.0], [4.0, 1.0])]},
    **{f"feature_{w}": {
        "coords": "z", "background": ([0.0, 0.0], [1.0, 1.0]),
        "experts": [("p_1", [0], [2.0, 0.0], [0.25, 1.0]),
                    ("p_2", [1], [0.0, 2.0], [1.0, 0.25])]}
       for w in ("rotation", "block_diagonal", "shear")},
}


def _projective_target_2d(spec: dict):
    """Per-coordinate ``(mean, variance)`` of the projective target when the experts' blocks
    are disjoint (each coordinate has exactly one expert), else ``None`` (conflicting
    projections: no distribution has every expert's marginal)."""
    owner: dict[int, tuple] = {}
    for _, block, mean, var in spec["experts"]:
        for j in block:
            if j in owner:
                return None
            owner[j] = (mean[j], var[j])
    bm, bv = spec["background"]
    return [owner.get(j, (bm[j], bv[j])) for j in range(len(bm))]


def _normal_pdf(g: np.ndarray, m: float, v: float) -> np.ndarray:
    return np.exp(-0.5 * (g - m) ** 2 / v) / np.sqrt(2 * np.pi * v)


def _set_fmt(S: Sequence[int]) -> str:
    return "{" + ",".join(str(int(j)) for j in S) + "}"


def _heatmap_figure(res, plt, folder: Path) -> str:
    """Samples per coordinate (rows: samples) for each sampler, ``S`` marked, and the mean on
    and off ``S`` of all samples against the projective target."""
    hm = res.plots["heatmaps"]
    S = [int(j) for j in res.metrics.get("S", [])]
    off_target = float(res.metrics.get("q", 0.0))  # eq. (18): clutter rate q; eq. (17): empty
    n_panels = len(hm) + 1
    fig, axes = plt.subplots(1, n_panels, figsize=(3.3 * n_panels + 0.8, 3.9), squeeze=False,
                             gridspec_kw={"width_ratios": [1.0] * len(hm) + [1.2]})
    fig.subplots_adjust(wspace=0.45)  # room for every panel's y label (before the colorbar)
    axes = axes[0]
    im = None
    for ax, (m, x) in zip(axes, hm.items()):
        im = ax.imshow(x, aspect="auto", cmap="viridis", vmin=-0.2, vmax=1.2,
                       interpolation="nearest")
        ax.set_title(f"{m}: first {x.shape[0]} samples", fontsize=8)
        ax.set_xlabel("coordinate (S marked in red)", fontsize=8)
        ax.set_ylabel("sample index", fontsize=8)
        ax.set_xticks(range(x.shape[1]))
        for lab in ax.get_xticklabels():
            if int(lab.get_text() or -1) in S:
                lab.set_color(TARGET_COLOR)
                lab.set_fontweight("bold")
        for j in S:
            ax.plot([j], [-0.5], marker="v", color=TARGET_COLOR, ms=6, clip_on=False)
    cb = fig.colorbar(im, ax=list(axes[:-1]), shrink=0.85, pad=0.02)
    cb.set_label("sample value (1 = object, 0 = empty)", fontsize=8)
    ax = axes[-1]
    sam = res.metrics.get("samplers", {})
    names = list(sam)
    xs = np.arange(len(names))
    on = [sam[m].get("mean_on_S", np.nan) for m in names]
    off = [sam[m].get("mean_off_S", np.nan) for m in names]
    ax.bar(xs - 0.18, on, 0.36, label="mean on S", color="tab:blue")
    ax.bar(xs + 0.18, [np.nan if v is None else v for v in off], 0.36, label="mean off S",
           color="tab:gray")
    ax.axhline(1.0, color=TARGET_COLOR, lw=1.2, label="projective target on S (1)")
    ax.axhline(off_target, color=TARGET_COLOR, lw=1.2, ls=":",
               label=f"projective target off S ({off_target:g})")
    ax.set_xticks(xs, [m.replace("_", "\n") for m in names], fontsize=7)
    ax.set_ylim(-0.1, 1.25)
    ax.set_xlabel("sampler", fontsize=8)
    ax.set_ylabel("mean sample value (all samples)", fontsize=8)
    ax.set_title("mean on / off S vs projective target", fontsize=8)
    ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=2,
              frameon=False)
    fig.suptitle(f"{res.name}: composing S = {_set_fmt(S)} (expected {res.expected}, observed "
                 f"{res.observed})", fontsize=10)
    fn = f"{res.name}_heatmap.png"
    fig.savefig(folder / fn, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return fn


def _scatter_figures(res, plt, folder: Path) -> list[str]:
    """Samples of each sampler in the tested coordinates, the projective target (red, when it
    exists) and the exact composition C[p] (black, dashed); then each coordinate's histogram
    against the experts' marginals, and each sampler's standardized mean error per expert
    block against the decision rule's floor."""
    from .zoo.rules import EFFECT_FLOORS

    p = res.plots
    sc = p["scatter"]
    spec = EXPERTS_2D.get(res.name)
    c = spec["coords"] if spec else "x"
    axis_label = (lambda j: f"x[{j}]") if c == "x" else (lambda j: f"z[{j}] = (A x)[{j}]")
    target = _projective_target_2d(spec) if spec else None
    if "target" in p:  # the exact t = 0 composition C[p], in the plotted coordinates
        cmean, ccov = (np.asarray(a, float) for a in p["target"])
    else:
        cmean = ccov = None
    names = []

    def ellipses(ax, mean, cov, **style):
        g = np.linspace(-4, 4, 121)
        X, Y = np.meshgrid(g + mean[0], g + mean[1])
        P = np.linalg.inv(cov)
        dx, dy = X - mean[0], Y - mean[1]
        q = P[0, 0] * dx * dx + 2 * P[0, 1] * dx * dy + P[1, 1] * dy * dy
        ax.contour(X, Y, q, levels=[1.0, 4.0, 9.0], linewidths=1.0, **style)

    fig, axes = plt.subplots(1, len(sc), figsize=(3.1 * len(sc), 3.6), squeeze=False)
    for ax, (m, z) in zip(axes[0], sc.items()):
        ax.scatter(z[:, 0], z[:, 1], s=2, alpha=0.3, color="tab:blue")
        if target is not None:
            tm = np.array([t[0] for t in target])
            ellipses(ax, tm, np.diag([t[1] for t in target]), colors=TARGET_COLOR)
        if cmean is not None and (target is None or res.name.startswith("overlapping")):
            ellipses(ax, cmean, ccov, colors="k", linestyles="dashed")
        if cmean is not None:
            ax.set_xlim(cmean[0] - 4.5, cmean[0] + 4.5)
            ax.set_ylim(cmean[1] - 4.5, cmean[1] + 4.5)
        ax.set_xlabel(axis_label(0), fontsize=8)
        ax.set_ylabel(axis_label(1), fontsize=8)
        ax.set_title(f"{m}: {z.shape[0]} samples", fontsize=8)
    if target is not None:
        what = "red: projective target, 1/2/3-sd contours"
    else:
        what = ("no projective target (the experts' marginals on x[0] conflict); "
                "black dashed: exact composition C[p], 1/2/3 sd")
    fig.suptitle(f"{res.name}: samples ({what})", fontsize=9)
    fig.tight_layout()
    fn = f"{res.name}_scatter.png"
    fig.savefig(folder / fn, dpi=80, bbox_inches="tight")
    plt.close(fig)
    names.append(fn)
    if spec is None:
        return names

    # marginals: one panel per coordinate, then the mean errors
    experts = spec["experts"]
    fig, axes = plt.subplots(1, 3, figsize=(12.5, 5.0))
    fig.subplots_adjust(bottom=0.42, top=0.86, wspace=0.3)  # legends go below the panels
    for j, ax in enumerate(axes[:2]):
        vals = np.concatenate([z[:, j] for z in sc.values()])
        lo, hi = np.percentile(vals, [0.5, 99.5])
        for _, block, mean, var in experts:  # show each expert's marginal to +-2.5 sd
            if j in block:
                lo = min(lo, mean[j] - 2.5 * np.sqrt(var[j]))
                hi = max(hi, mean[j] + 2.5 * np.sqrt(var[j]))
        lo, hi = lo - 0.5, hi + 0.5
        g = np.linspace(lo, hi, 300)
        for m, z in sc.items():
            ax.hist(z[:, j], bins=40, range=(lo, hi), density=True, histtype="step", lw=1.0,
                    label=f"samples: {m}")
        if target is not None:
            ax.plot(g, _normal_pdf(g, *target[j]), color=TARGET_COLOR, lw=2.0,
                    label=f"projective target N({target[j][0]:g}, {target[j][1]:g})")
        else:
            for (lab, block, mean, var), col in zip(experts, EXPERT_COLORS):
                if j in block:
                    ax.plot(g, _normal_pdf(g, mean[j], var[j]), color=col, lw=2.0,
                            label=f"expert {lab} marginal N({mean[j]:g}, {var[j]:g})")
        if cmean is not None and target is None:
            ax.plot(g, _normal_pdf(g, cmean[j], ccov[j, j]), lw=1.5, **COMPOSED_STYLE,
                    label=f"exact C[p] marginal N({cmean[j]:.3g}, {ccov[j, j]:.3g})")
        ax.set_xlabel(axis_label(j), fontsize=8)
        ax.set_ylabel("density", fontsize=8)
        ax.set_title(f"marginal of {axis_label(j)}", fontsize=8)
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.25), frameon=False)
    # standardized mean error of each sampler (all n samples) per expert coordinate
    ax = axes[2]
    sam = res.metrics.get("samplers", {})
    rows = [(f"{lab}: {axis_label(j)}", j, mean[j], var[j])
            for lab, block, mean, var in experts for j in block]
    width = 0.8 / max(1, len(sam))
    for i, (m, v) in enumerate(sam.items()):
        zm = np.asarray(v.get("z_mean", [np.nan, np.nan]), float)
        errs = [(zm[j] - mu) / np.sqrt(var) for _, j, mu, var in rows]
        ax.bar(np.arange(len(rows)) + (i - (len(sam) - 1) / 2) * width, errs, width, label=m)
    floor = EFFECT_FLOORS["mahalanobis_mean_error"]
    ax.axhspan(-floor, floor, color=TARGET_COLOR, alpha=0.15,
               label=f"within the decision floor ({floor:g} sd)")
    ax.axhline(0.0, color=TARGET_COLOR, lw=1.2)
    ax.set_xticks(range(len(rows)), [r[0] for r in rows], fontsize=7)
    ax.set_xlabel("expert: coordinate", fontsize=8)
    ax.set_ylabel("mean error (expert sd)", fontsize=8)
    ax.set_title("(sample mean - expert mean) / expert sd", fontsize=8)
    ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=2,
              frameon=False)
    fig.suptitle(f"{res.name}: samples vs the experts' marginals (expected {res.expected}, "
                 f"observed {res.observed})", fontsize=9)
    fn = f"{res.name}_marginals.png"
    fig.savefig(folder / fn, dpi=80, bbox_inches="tight")
    plt.close(fig)
    names.append(fn)
    return names


def _length_figure(res, plt, folder: Path) -> str:
    from .zoo.length import COUNT_THRESHOLD

    rows = res.plots["length"]
    sizes = np.arange(1, len(rows) + 1)
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    per_size = res.metrics.get("per_size", {})
    samplers = list(next(iter(per_size.values()), {}))
    for m in samplers:
        ax.plot(sizes, [per_size[str(s)][m]["frac_exact_count"] for s in sizes], "o-",
                ms=4, label=f"samples: {m}")
    if not samplers:
        ax.plot(sizes, rows, "o-", label="samples (worst sampler)")
    ax.axhline(1.0, color=TARGET_COLOR, lw=1.2, label="projective target (every sample)")
    ax.axhline(COUNT_THRESHOLD, color="k", ls=":", lw=1.0,
               label=f"pass threshold {COUNT_THRESHOLD:g}")
    ax.set_ylim(-0.05, 1.05)
    ax.set_xticks(sizes)
    ax.set_xlabel("|S| composed (S = {0, ..., |S|-1})")
    ax.set_ylabel("fraction with exactly S active")
    ax.set_title(f"{res.name}: expected {res.expected}, observed {res.observed}", fontsize=9)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    fn = f"{res.name}_length.png"
    fig.savefig(folder / fn, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return fn


def _locality_figure(res, plt, folder: Path) -> str:
    """Off-block Jacobian ratios of the length-generalization compositions against ``t``
    (``metrics["score_locality"]`` of
    :func:`composition_jax.experiments.length_generalization.score_locality_study`): the exact
    blob laws on a log axis (left), the learned network with its control and the locality
    threshold on a linear axis (right, where the learned values lie close together)."""
    loc = res.metrics["score_locality"]
    ts = np.asarray(loc["t"], float)
    fig, axs = plt.subplots(1, 2, figsize=(9.6, 3.4))
    panels = (
        (axs[0], "exact", (("empty", "empty background", {"color": "C0"}),
                           ("bayes", "Bayes (p_u background)", {"color": "C3"}))),
        (axs[1], "learned", (("empty", "empty background", {"color": "C0"}),
                             ("bayes", "Bayes (p_u background)", {"color": "C3"}),
                             ("control", "p_b alone (control; exact 0)",
                              {"color": "C7", "ls": "-."}))))
    for ax, src, roles in panels:
        zeros = []
        for role, label, style in roles:
            y = np.asarray(loc[src][role]["off_block_ratio"], float)
            se = np.asarray(loc[src][role]["se"], float)
            pos = y > 0 if src == "exact" else np.isfinite(y)  # log axis: zeros named, not floored
            if not pos.all():
                zeros.append(label)
            if pos.any():
                ax.errorbar(ts[pos], y[pos], yerr=se[pos], marker="o", ms=3.5, capsize=2,
                            label=label, **style)
        if zeros:
            ax.plot([], [], " ", label="exactly 0 at some t (not drawn): " + "; ".join(zeros))
        ax.set_xlabel("diffusion time t")
        ax.set_ylabel("off-block Jacobian ratio")
    axs[0].set_yscale("log")
    axs[0].set_title("exact blob laws (quadrature)", fontsize=9)
    per = loc["verdict"]["per_t"]
    axs[1].plot(ts, [r["threshold"] for r in per], "k:", lw=1.2,
                label=f"locality threshold (empty local: {loc['verdict']['observed']})")
    axs[1].set_ylim(bottom=0.0)
    axs[1].set_title("learned network", fontsize=9)
    for ax in axs:
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
    fig.suptitle(f"score locality of compositions of S = {loc['S']} ({loc['n']} particles per t)",
                 fontsize=10)
    fig.subplots_adjust(wspace=0.3)
    fn = f"{res.name}_locality.png"
    fig.savefig(folder / fn, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return fn


def _pyplot():
    """``matplotlib.pyplot`` on the Agg backend, or ``None`` without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _figures(res, folder: Path) -> list[str]:
    """Write this scenario's PNGs; returns their file names (empty without matplotlib)."""
    plt = _pyplot()
    if plt is None:
        return []
    names = []
    p = res.plots
    if "heatmaps" in p:
        names.append(_heatmap_figure(res, plt, folder))
    if "scatter" in p:
        names += _scatter_figures(res, plt, folder)
    if "length" in p:
        names.append(_length_figure(res, plt, folder))
    if "score_locality" in res.metrics:
        names.append(_locality_figure(res, plt, folder))
    return names


#: A composition-gap curve whose every value is at most this is drawn as zero: the closed-form
#: KL in float32 rounds to about 10 eps * d (d <= 8 here); exact zeros are marked as such.
GAP_ZERO_TOL = 1e-6


def _gap_figure(results, folder: Path) -> str | None:
    """The exact composition gap ``KL(N_t[C[p]] || C[p^t])`` (Section 7) against ``t`` for the
    Gaussian tuples: identical curves drawn once (their names together), curves that are zero
    at every ``t`` listed instead of drawn on the log axis (exactly zero, or below
    :data:`GAP_ZERO_TOL`), and zero points of a positive curve left out, never floored."""
    plt = _pyplot()
    if plt is None:
        return None
    curves = []
    for r in results:
        g = r.metrics.get("composition_gap")
        if isinstance(g, dict) and g.get("available") and g.get("kind") == "kl_exact":
            curves.append((r.name, np.asarray(g["ts"], float), np.asarray(g["divergence"], float)))
    if not curves:
        return None
    groups: list[tuple[list[str], np.ndarray, np.ndarray]] = []
    for name, ts, v in curves:
        for names_, ts_, v_ in groups:
            if ts_.shape == ts.shape and np.allclose(ts_, ts) and np.all(v_ == 0.0) == np.all(
                    v == 0.0) and np.allclose(v_, v, rtol=1e-5, atol=GAP_ZERO_TOL):
                names_.append(name)
                break
        else:
            groups.append(([name], ts, v))
    exact0 = [n for names_, _, v in groups if np.all(v == 0.0) for n in names_]
    tiny = [n for names_, _, v in groups if not np.all(v == 0.0)
            and np.all(np.abs(v) <= GAP_ZERO_TOL) for n in names_]
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    drawn = 0
    for names_, ts, v in groups:
        if np.all(np.abs(v) <= GAP_ZERO_TOL):
            continue
        vv = np.where(v > 0, v, np.nan)  # a zero point has no place on a log axis: left out
        ax.plot(ts, vv, "o-", ms=3, label=" = ".join(names_))
        drawn += 1
    ax.set_yscale("log")
    ax.set_xlabel("t (VP schedule)")
    ax.set_ylabel("KL(N_t[C[p]] || C[p^t])  (exact)")
    ax.set_title("composition gap vs t (Section 7), Gaussian tuples", fontsize=9)
    notes = []
    if exact0:
        notes.append("exact zero at every t: " + ", ".join(exact0))
    if tiny:
        notes.append(f"zero up to float rounding (< {GAP_ZERO_TOL:g}) at every t: "
                     + ", ".join(tiny))
    if notes:
        import textwrap

        ax.text(0.0, -0.3, "\n".join(textwrap.fill(s, 95) for s in notes),
                transform=ax.transAxes, fontsize=7, va="top")
    if drawn:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    else:
        ax.set_ylim(1e-8, 1.0)
    fn = "composition_gap.png"
    fig.savefig(folder / fn, dpi=80, bbox_inches="tight")
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
              "report's projective decision rule; for the learned ring models, failure only "
              "beyond what their score error can cause, computed along the exact "
              "composition's sampling chain: the total-variation budget for the KS and MMD "
              "effects, the path-KL budget of either direction for the binary KL of a "
              "ring-collapse event); a verdict the statistics cannot settle "
              "at this size is reported "
              "as `inconclusive` and flagged, not counted as agreement. The ring "
              "compositions' models are block-local networks for the laws that factorize over "
              "the blocks: over the empty background the composition was decided `success` "
              "and over the Bayes one `failure`, in quick and in full mode (2026-12-01); with "
              "one unconstrained MLP instead (`VectorConfig(network=\"mlp\")`) the empty one "
              "stays `inconclusive`, its deviation within the error budget of its models.",
        "off": "Not run (default in quick mode: the scenario zoo alone fills the quick budget; "
               f"pass `--learned` to add them: {LEARNED_QUICK_RUNTIME}; or use full mode, "
               "where they run by default).",
        "skipped": "Not run: the minimal size is for tests only.",
    }[learned]]


def _count(counts: dict, key: str) -> str:
    """``"k / T (p %)"`` from a dict of counts with its number of ``"trials"``."""
    return f"{counts[key]} / {counts['trials']} ({100.0 * counts[key] / counts['trials']:.1f} %)"


def _floors_section() -> list[str]:
    """The decision rule's floors with the exact bias each absorbs, and its calibration."""
    from .zoo import rules

    rows = {s: {r["effect"]: r for r in rules.floors(s)} for s in sorted(rules.FLOORS_BY_STEPS)}
    steps = sorted(rows)
    L = ["### Floors and the discretization bias they absorb", "",
         "Each floor is at least the largest bias of the zoo's samplers on its affine "
         "Factorized-Conditionals cases at the run's step count (t_min = 1e-4; runs with "
         "200-999 steps use the 200-step row), computed exactly with `cj.verify.sampler_law` "
         "for euler_maruyama and ode_heun and by Monte Carlo (n = 1e5) for the "
         "predictor-corrector, and at most about twice it. A rejection counts only when the "
         "effect exceeds its floor by its own sampling error (a minimum-effect test at the "
         "test's level), so a sampler whose true effects are all within the floors is declared "
         "non-projective with probability at most alpha at every n (normal approximation of "
         "the standard errors; the KS bound is exact): the floors absorb the bias at every "
         "size. A 10 % variance error (relative covariance error 0.10) in Euler-Maruyama or "
         "Heun output is flagged at the full size (n = 10000, their 1000-step floors). Where "
         "the exact "
         "t = 0 composition has a closed form, the joint law is also tested "
         "(`cj.verify.same_law`, Holm over MMD, energy distance, exact mean chi-square and Wald "
         "covariance test) with the same floors.", "",
         "| effect | " + " | ".join(f"floor ({s} steps)" for s in steps)
         + " | " + " | ".join(f"largest bias ({s} steps)" for s in steps) + " | where |",
         "|---|" + "---|" * (2 * len(steps) + 1)]
    for k in rows[steps[0]]:
        L.append(f"| `{k}` | " + " | ".join(f"{rows[s][k]['floor']:g}" for s in steps) + " | "
                 + " | ".join(f"{rows[s][k]['bias']:g}" for s in steps) + " | "
                 + " / ".join(dict.fromkeys(rows[s][k]["where"] for s in steps)) + " |")
    for s_, per in rules.SAMPLER_FLOORS.items():
        for m in per:
            own = [r for r in rules.floors(s_, m) if r["floor"] != rows[s_][r["effect"]]["floor"]]
            L += ["", f"At {s_} steps `{m}` output has floors of its own where its exact bias is "
                  "smaller: " + ", ".join(f"`{r['effect']}` {r['floor']:g} (bias {r['bias']:g})"
                                          for r in own) + "."]
    L += ["", "### Measured false-positive rate", "",
          "`tests/test_calibration.py` (default suite) draws 500 exact null data sets of the "
          "disjoint-masks composition (n = 2000), computes every statistic of `projective()` and "
          "`same_law()` in one vmapped, jitted call and counts family-wise rejections at level "
          "0.05: the test fails above the 0.99 binomial quantile (37 of 500), and a procedure "
          "whose true level were 0.10 would fail it with probability 0.97. Measured: "
          "`projective()` 24 / 500 (4.8 %), `same_law()` 20 / 500 (4.0 %), their union (the "
          "two procedures) 42 / 500 (8.4 %, bound 10 %), the decision rule's material "
          f"rejections {_count(rules.MEASURED_FPR, 'exact')}; with every variance 6 % too large "
          "(the covariance effect at its floor, a biased sampler the floors must absorb) the "
          f"rule declares a material rejection in {_count(rules.MEASURED_FPR, 'at_floor')} "
          "(bound 10 %), where asking only for the effect to exceed its floor gave "
          f"{_count(rules.MEASURED_FPR, 'at_floor_former_rule')}. The zoo runs each procedure at "
          "alpha / 2, so one sampler's output is judged at family-wise level alpha and a "
          "success scenario (three samplers whose biases are within the floors) is falsely "
          "observed as a failure with probability at most 3 % (union bound).", ""]
    return L


def _markdown(results, cfg, env, figs: dict, gap_fig: str | None, seconds: float,
              learned: str = "off", figures: bool = True) -> str:
    from .verify.scenarios import ALPHA
    from .zoo.rules import floors_for

    L = ["# composition_jax: reproduction of Bradley et al. (2025), synthetic findings", ""]
    L.append(f"Mode **{cfg.mode}** (n = {cfg.n} samples per sampler, {cfg.steps} steps, "
             f"grid `{cfg.grid}`, VP schedule, t_min = {cfg.t_min}); {len(results)} scenarios "
             f"in {seconds:.0f} s. **{_headline(results)}**")
    if not figures:
        L += ["", f"*Figures skipped: matplotlib is not installed ({FIGURES_HINT}).*"]
    L += ["", "## Decision rule", "",
          f"A sampler's output is *projective* when no test of `cj.verify.projective` at "
          f"family-wise level alpha = {ALPHA} (Bonferroni over all tests) rejects "
          "*materially*: the test rejects AND the lower confidence bound on its effect, at the "
          "test's own level (effect minus z standard errors estimated from the data; for the "
          "KS distance the exact Dvoretzky-Kiefer-Wolfowitz bound), exceeds the effect's floor "
          f"for this run's {cfg.steps} steps: "
          + ", ".join(f"`{k}` > {v}" for k, v in floors_for(cfg.steps).items())
          + ". The floors keep discretization bias (measured exactly with `sampler_law`, table "
          "below) from counting as a failure, and are far "
          "below every effect the theory predicts for failures. A scenario is observed "
          "`success` when every standard sampler (euler_maruyama, ode_heun, "
          "predictor_corrector) is projective; scenario-specific criteria are stated in the "
          "reasons.", "", *_floors_section(), "## Summary", "",
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
    if figures:
        L += ["", "## Reading the figures", "",
              ("- **Red is the projective target** (Definition 4.1: every block of coordinates "
              "has the law of its expert, the rest the background's). When the experts' blocks "
              "overlap there is no projective target and nothing is red; the exact t = 0 "
              "composition C[p] is then drawn in black, dashed, and the experts' conflicting "
              "marginals in their own colours."),
              ("- `*_heatmap.png` (eqs. (17), (18)): rows are samples, columns coordinates, S "
              "marked in red; the last panel compares each sampler's mean value on and off S "
              "(all samples) with the projective target."),
              ("- `*_scatter.png` and `*_marginals.png` (2-D scenarios; feature-space scenarios "
              "in z = A x): the samples, each coordinate's histogram against the experts' "
              "marginals, and each sampler's mean error per expert coordinate in units of the "
              "expert's standard deviation, against the decision rule's floor (shaded)."),
              ("- `*_length.png`: the fraction of samples with exactly the composed set S "
              "active, per sampler, against the target 1 and the pass threshold."),
              ("- `*_locality.png` (learned length generalization): the off-block ratio of "
              "the score Jacobian over the locations' pixel blocks against t, learned and exact, "
              "empty and Bayes backgrounds, and the locality threshold."),
              ("- `composition_gap.png`: the exact KL between the noised composition and the "
              "composition of the noised laws (Section 7); identical curves are drawn once, "
              "curves that are zero at every t are listed under the plot, never floored.")]
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
        if isinstance(r.metrics.get("score_locality"), dict):
            loc = r.metrics["score_locality"]
            L += ["", (f"Score locality, S = {loc['S']} (off-block Jacobian ratio ± SE; "
                       f"learned empty background local: **{loc['verdict']['observed']}**):"), "",
                  ("| t | exact empty | exact Bayes | learned empty | learned Bayes | "
                   "learned p_b alone | threshold | empty local | Bayes resolved |"),
                  "|---|---|---|---|---|---|---|---|---|"]
            for j, (t, v) in enumerate(zip(loc["t"], loc["verdict"]["per_t"])):
                cell = [f"{loc[s][m]['off_block_ratio'][j]:.3g} ± {loc[s][m]['se'][j]:.1g}"
                        for s, m in (("exact", "empty"), ("exact", "bayes"), ("learned", "empty"),
                                     ("learned", "bayes"), ("learned", "control"))]
                L.append(f"| {t:g} | " + " | ".join(cell)
                         + f" | {v['threshold']:.3g} | {v['local']} | {v['bayes_resolved']} |")
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
        learned_join = None
        if learned_state == "on":
            if progress:
                print("learned-model experiments (training or cache, then sampling) start "
                      "beside the scenarios ...", file=sys.stderr, flush=True)
            # a daemon thread beside the zoo's scenarios (its records come after the zoo's)
            learned_join = beside(lambda: learned_results(quick=mode != "full"), "learned")
        try:
            for r in _run_scenarios(sc, names, cfg, bar, progress):
                results.append(r)
                figs[r.name] = draw(r, tmp)
        finally:  # also on an interrupt: the bar's last line comes before any message
            if bar is not None:
                bar.close()
        if learned_join is not None:
            if progress:
                print("waiting for the learned-model experiments ...", file=sys.stderr,
                      flush=True)
            for r in learned_join():
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
