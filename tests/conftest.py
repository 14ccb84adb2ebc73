"""Test configuration.

* Rank and dtype promotion are strict in every test (implicit broadcasting of ranks and implicit
  dtype promotion raise), so the library is tested for shape/dtype hygiene.
* Each test gets a fixed PRNG key derived from its node id (stable across runs, distinct between
  tests): the ``key`` fixture.
* ``x64`` tests run only when ``JAX_ENABLE_X64=1`` (``make test`` runs them in a second process,
  since x64 is global state); ``slow`` tests are deselected by ``make test``.
* Every process of a test run (both pytest sessions of ``make test``, the notebook scripts and the
  CLI subprocesses the tests start) shares one persistent XLA compilation cache,
  ``$JAX_COMPILATION_CACHE_DIR`` (``make test`` sets it; a bare ``pytest`` defaults it to
  ``.jax_cache/`` in the repository; set it to the empty string to disable the cache). Its key
  covers the compiled module, jaxlib, the backend, ``XLA_FLAGS`` and the compile options, so a
  hit is the executable the same compilation would produce. At session start, entries that do
  not decompress (a write cut short) are deleted, since JAX would warn on every read of them (an
  error inside ``warnings.simplefilter("error")``) and never rewrite them, and the oldest entries
  go while the cache is over 2 GiB.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import NamedTuple

# Before jax is imported, so that this process reads the same settings as its subprocesses.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(Path(__file__).resolve().parents[1] / ".jax_cache")
if os.environ["JAX_COMPILATION_CACHE_DIR"]:
    # absolute: subprocesses started in another folder share it
    os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.abspath(os.environ["JAX_COMPILATION_CACHE_DIR"])
    # cache every compilation, however small or fast (the suite is thousands of small ones)
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

import jax
import pytest

X64 = bool(jax.config.read("jax_enable_x64"))
CACHE_DIR = os.environ["JAX_COMPILATION_CACHE_DIR"]
if CACHE_DIR:  # jax was imported before this file (a plugin): apply the settings here too
    jax.config.update("jax_compilation_cache_dir", CACHE_DIR)
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes",
                      int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]))


CACHE_MAX_BYTES = 2 << 30  # a full run writes ~40 MB; past this, the oldest entries go


def _sweep_compilation_cache(path: str, max_bytes: int = CACHE_MAX_BYTES) -> int:
    """Delete entries that do not decompress (a write cut short: JAX would warn on every read and
    never rewrite them), then the oldest entries while the cache is over ``max_bytes``; returns
    how many were deleted."""
    try:
        from jax._src.compilation_cache import decompress_executable
    except ImportError:  # another jax layout: leave the cache to jax
        return 0
    kept, dropped = [], 0
    for entry in Path(path).glob("*-cache"):
        try:
            data = entry.read_bytes()
            decompress_executable(data)
            kept.append((entry.stat().st_mtime, len(data), entry))
        except FileNotFoundError:  # removed by a concurrent session
            continue
        except Exception:  # noqa: BLE001 (zlib or zstd error): truncated or garbled
            entry.unlink(missing_ok=True)
            dropped += 1
    total = sum(size for _, size, _ in kept)
    for _, size, entry in sorted(kept, key=lambda e: e[0]):
        if total <= max_bytes:
            break
        entry.unlink(missing_ok=True)
        total -= size
        dropped += 1
    return dropped


def pytest_sessionstart(session):
    if CACHE_DIR and Path(CACHE_DIR).is_dir():
        _sweep_compilation_cache(CACHE_DIR)


class Moved(NamedTuple):
    """A default-suite test that runs in the slow lane instead (see SLOW_TESTS)."""

    cost_s: float  #: measured cost, CPU seconds (see SLOW_TESTS for the conditions)
    why: str  #: why it may leave the default suite: which default test keeps checking the same
    x64: bool = False  #: a float64 test (runs in the float64 process of the slow lane)


_F32_SCHEDULES = (
    "float32 at the cosine and VE schedules: the same formulas are checked at these schedules "
    "to 1e-10 by the float64 cases (default suite), and in float32 at the VP schedule for every "
    "family")
_FM_MARGINALS = (
    "the marginal's code path depends on the index set (FactorMixture or Product result), "
    "checked for each index set with one covariance kind in rotation, and every kind stays "
    "checked by default")
_NN_PARAMS = (
    "each output parameterization (eps, score, x0) and each schedule (VP, cosine, VE) keeps one "
    "case in the default suite (eps-vp, score-ve, x0-cos)")


#: Default-suite tests of other files that run in the slow lane instead (``make test-slow``):
#: node id, or node id without its ``[parameters]`` for every parametrization -> its measured
#: cost (CPU seconds of the test process and its subprocesses, empty compilation cache, XLA
#: backend optimization level 0, 2-core machine under the load of other work; the default
#: suite's budget is ~5 minutes of wall time on 2 idle cores) and why the default suite keeps
#: its check without it. CI runs every one of them right after the default suite
#: (``make test-slow SLOW=listed``, see .ci/run), so moving a test here takes nothing out of CI.
#: Marked here, centrally, so that the test files stay as their authors wrote them.
SLOW_TESTS: dict[str, Moved] = {
    "tests/test_flow.py::test_flow_matching_training_learns_the_exact_velocity_1d": Moved(
        10.0, "trains a network (statistical); the loss and parameterization tests of the file "
        "stay in the default suite"),
    "tests/test_methods_contract.py::test_sample_prefix_invariance_and_alias_equals_instance"
    "[annealed_hmc]": Moved(
        10.0, "the pilot / pre-drawn-noise machinery that makes particle i depend on (key, i) is "
        "shared by the annealed methods: the annealed_mala case keeps checking it by default"),
    "tests/test_bench.py::test_tiny_end_to_end[names0]": Moved(
        17.0, "two benchmark subprocesses end to end: CI runs `composition-jax bench --quick` "
        "(every installed implementation) right after the default suite, and the harness's "
        "backend-only sweep and the NumPy recursion against the exact law stay default"),
    # Eight of the nine notebooks' quick-mode runs (~180 s of the default suite's CPU; costs
    # measured through the fork server, per notebook apportioned by wall time). Each notebook
    # checks its own numbers, which the unit tests of the modules it calls check against exact
    # oracles by default; the default suite keeps the runner (08, the smallest notebook), the
    # check helper, the no-bare-assert rule and the .ipynb pairing of every notebook.
    "tests/test_notebooks.py::test_notebook_runs_in_quick_mode[01_quickstart]": Moved(
        34.0, "sampling and composing as in the README: test_compose / test_samplers"),
    "tests/test_notebooks.py::test_notebook_runs_in_quick_mode[02_projective_and_fc]": Moved(
        39.0, "FC and projective checks: test_verify_fc_projective, test_calibration"),
    "tests/test_notebooks.py::test_notebook_runs_in_quick_mode[03_length_generalization]": Moved(
        13.0, "the length-generalization scenarios: test_scenarios, test_locality_learned"),
    "tests/test_notebooks.py::test_notebook_runs_in_quick_mode[04_feature_space]": Moved(
        39.0, "feature-space shear and rotation: test_claims, test_compose_exact"),
    "tests/test_notebooks.py::test_notebook_runs_in_quick_mode[05_success_heuristic]": Moved(
        13.0, "the success heuristics: test_verify_heuristics_gap, test_gap_fisher"),
    "tests/test_notebooks.py::test_notebook_runs_in_quick_mode[06_weights_and_guidance]": Moved(
        13.0, "weights and guidance: test_compose (Bayes and guidance are compose), "
        "test_compose_exact"),
    "tests/test_notebooks.py::test_notebook_runs_in_quick_mode[07_performance]": Moved(
        13.0, "the benchmark harness: test_bench; CI also runs `composition-jax bench --quick`"),
    "tests/test_notebooks.py::test_notebook_runs_in_quick_mode[09_smc_and_likelihoods]": Moved(
        13.0, "SMC and likelihoods: test_smc, test_likelihood"),
    # claims 26 / 27: one sample case and one sweep
    "tests/test_claims.py::test_claim26_sampler_disagreement_feature[rotation-True]": Moved(
        21.0, "three samplers at n = 20000: the shear case keeps the diagnostic on samples in "
        "the default suite, and test_claim26_exact_laws_disagree_iff_fc_fails keeps the exact-law "
        "claim for both cases"),
    "tests/test_claims.py::test_claim27_approximate_locality_grows_with_rho_shrinks_with_noise":
        Moved(23.0, "a sweep over rho and the noise level: the exact local-score claim "
              "(test_claim27_cpc_gives_local_scores_exactly) stays in the default suite", x64=True),
    # statistical cases whose law the default suite keeps checking exactly or in another case
    "tests/test_churn.py::test_churned_sample_moments_match_exact_law[vp-columns]": Moved(
        18.0, "sample moments of four churned samplers (n = 2000): the churn's exact transition "
        "(test_churn_maps_p_t_to_p_t_hat_exactly), the churned law's weak order and zero-window "
        "limit (float64) and churned sampling in both layouts (test_churned_rows_equal_columns) "
        "stay default"),
    "tests/test_trust_outputs.py::test_signal_leaves_nothing_behind[15-143]": Moved(
        5.6, "SIGTERM: the same handler as SIGINT, whose case stays in the default suite"),
    # exhaustive parametrizations: the default suite keeps one case of each code path
    "tests/test_samplers_sharding.py::test_sharded_equals_unsharded_on_8_devices": Moved(
        20.0, "a subprocess with 8 emulated devices: test_multiprocess keeps the same check "
        "(annealed MALA and the default sampler over a 2-device mesh == unsharded) by default"),
    "tests/test_samplers_columns.py::test_score_columns_equals_vmapped_score": Moved(
        20.0, "test_score_columns keeps every family's columns score == vmap(score) by default, "
        "and compositions in both layouts give the same samples (test_columns_equal_rows)"),
    "tests/test_samplers_columns.py::test_columns_equal_rows[ode_euler]": Moved(
        8.0, "Euler is the first stage of Heun, whose case stays default"),
    "tests/test_samplers_columns.py::test_columns_equal_rows[ddpm]": Moved(
        8.0, "DDPM is DDIM at eta = 1 (one transition), whose case stays default"),
    "tests/test_verify_fc_projective.py::test_projective_passes_on_exact_composition": Moved(
        11.3, "the exact composition passing the projective check is what "
        "test_calibration::test_projective_family_wise_fpr checks at its level by default"),
    "tests/test_distributions_exact.py::test_score_is_grad_log_prob[gaussian-cosine]": Moved(
        0.5, _F32_SCHEDULES),
    "tests/test_distributions_exact.py::test_log_prob_score_denoise_match_independent_oracle[gaussian-cosine]": Moved(
        0.1, _F32_SCHEDULES),
    "tests/test_distributions_exact.py::test_score_is_grad_log_prob[gaussian-ve]": Moved(
        0.5, _F32_SCHEDULES),
    "tests/test_distributions_exact.py::test_log_prob_score_denoise_match_independent_oracle[gaussian-ve]": Moved(
        0.1, _F32_SCHEDULES),
    "tests/test_distributions_exact.py::test_score_is_grad_log_prob[mixture-cosine]": Moved(
        0.5, _F32_SCHEDULES),
    "tests/test_distributions_exact.py::test_log_prob_score_denoise_match_independent_oracle[mixture-cosine]": Moved(
        0.1, _F32_SCHEDULES),
    "tests/test_distributions_exact.py::test_score_is_grad_log_prob[mixture-ve]": Moved(
        0.5, _F32_SCHEDULES),
    "tests/test_distributions_exact.py::test_log_prob_score_denoise_match_independent_oracle[mixture-ve]": Moved(
        0.1, _F32_SCHEDULES),
    "tests/test_distributions_exact.py::test_score_is_grad_log_prob[empirical-cosine]": Moved(
        0.5, _F32_SCHEDULES),
    "tests/test_distributions_exact.py::test_log_prob_score_denoise_match_independent_oracle[empirical-cosine]": Moved(
        0.1, _F32_SCHEDULES),
    "tests/test_distributions_exact.py::test_score_is_grad_log_prob[empirical-ve]": Moved(
        0.5, _F32_SCHEDULES),
    "tests/test_distributions_exact.py::test_log_prob_score_denoise_match_independent_oracle[empirical-ve]": Moved(
        0.1, _F32_SCHEDULES),
    "tests/test_distributions_exact.py::test_score_is_grad_log_prob[product-cosine]": Moved(
        0.5, _F32_SCHEDULES),
    "tests/test_distributions_exact.py::test_log_prob_score_denoise_match_independent_oracle[product-cosine]": Moved(
        0.1, _F32_SCHEDULES),
    "tests/test_distributions_exact.py::test_score_is_grad_log_prob[product-ve]": Moved(
        0.5, _F32_SCHEDULES),
    "tests/test_distributions_exact.py::test_log_prob_score_denoise_match_independent_oracle[product-ve]": Moved(
        0.1, _F32_SCHEDULES),
    "tests/test_distributions_exact.py::test_score_is_grad_log_prob[pf_gaussian-cosine]": Moved(
        0.5, _F32_SCHEDULES),
    "tests/test_distributions_exact.py::test_log_prob_score_denoise_match_independent_oracle[pf_gaussian-cosine]": Moved(
        0.1, _F32_SCHEDULES),
    "tests/test_distributions_exact.py::test_score_is_grad_log_prob[pf_gaussian-ve]": Moved(
        0.5, _F32_SCHEDULES),
    "tests/test_distributions_exact.py::test_log_prob_score_denoise_match_independent_oracle[pf_gaussian-ve]": Moved(
        0.1, _F32_SCHEDULES),
    "tests/test_distributions_exact.py::test_score_is_grad_log_prob[pf_mixture-cosine]": Moved(
        0.5, _F32_SCHEDULES),
    "tests/test_distributions_exact.py::test_log_prob_score_denoise_match_independent_oracle[pf_mixture-cosine]": Moved(
        0.1, _F32_SCHEDULES),
    "tests/test_distributions_exact.py::test_score_is_grad_log_prob[pf_mixture-ve]": Moved(
        0.5, _F32_SCHEDULES),
    "tests/test_distributions_exact.py::test_log_prob_score_denoise_match_independent_oracle[pf_mixture-ve]": Moved(
        0.1, _F32_SCHEDULES),
    "tests/test_distributions_exact.py::test_score_is_grad_log_prob[pf_empirical-cosine]": Moved(
        0.5, _F32_SCHEDULES),
    "tests/test_distributions_exact.py::test_log_prob_score_denoise_match_independent_oracle[pf_empirical-cosine]": Moved(
        0.1, _F32_SCHEDULES),
    "tests/test_distributions_exact.py::test_score_is_grad_log_prob[pf_empirical-ve]": Moved(
        0.5, _F32_SCHEDULES),
    "tests/test_distributions_exact.py::test_log_prob_score_denoise_match_independent_oracle[pf_empirical-ve]": Moved(
        0.1, _F32_SCHEDULES),
    "tests/test_distributions_exact.py::test_score_is_grad_log_prob[pf_orth_product-cosine]": Moved(
        0.5, _F32_SCHEDULES),
    "tests/test_distributions_exact.py::test_log_prob_score_denoise_match_independent_oracle[pf_orth_product-cosine]": Moved(
        0.1, _F32_SCHEDULES),
    "tests/test_distributions_exact.py::test_score_is_grad_log_prob[pf_orth_product-ve]": Moved(
        0.5, _F32_SCHEDULES),
    "tests/test_distributions_exact.py::test_log_prob_score_denoise_match_independent_oracle[pf_orth_product-ve]": Moved(
        0.1, _F32_SCHEDULES),
    "tests/test_distributions_exact.py::test_score_is_grad_log_prob[pf_blockdiag_product-cosine]": Moved(
        0.5, _F32_SCHEDULES),
    "tests/test_distributions_exact.py::test_log_prob_score_denoise_match_independent_oracle[pf_blockdiag_product-cosine]": Moved(
        0.1, _F32_SCHEDULES),
    "tests/test_distributions_exact.py::test_score_is_grad_log_prob[pf_blockdiag_product-ve]": Moved(
        0.5, _F32_SCHEDULES),
    "tests/test_distributions_exact.py::test_log_prob_score_denoise_match_independent_oracle[pf_blockdiag_product-ve]": Moved(
        0.1, _F32_SCHEDULES),
    "tests/test_factor_mixture.py::test_marginal[idx0-FactorMixture-full]": Moved(
        1.6, _FM_MARGINALS),
    "tests/test_factor_mixture.py::test_marginal[idx0-FactorMixture-iso]": Moved(
        1.6, _FM_MARGINALS),
    "tests/test_factor_mixture.py::test_marginal[idx1-FactorMixture-diag]": Moved(
        1.6, _FM_MARGINALS),
    "tests/test_factor_mixture.py::test_marginal[idx1-FactorMixture-iso]": Moved(
        1.6, _FM_MARGINALS),
    "tests/test_factor_mixture.py::test_marginal[idx2-FactorMixture-diag]": Moved(
        1.6, _FM_MARGINALS),
    "tests/test_factor_mixture.py::test_marginal[idx2-FactorMixture-full]": Moved(
        1.6, _FM_MARGINALS),
    "tests/test_factor_mixture.py::test_marginal[idx3-Product-full]": Moved(
        1.6, _FM_MARGINALS),
    "tests/test_factor_mixture.py::test_marginal[idx3-Product-iso]": Moved(
        1.6, _FM_MARGINALS),
    "tests/test_factor_mixture.py::test_marginal[idx4-Product-diag]": Moved(
        1.6, _FM_MARGINALS),
    "tests/test_factor_mixture.py::test_marginal[idx4-Product-iso]": Moved(
        1.6, _FM_MARGINALS),
    "tests/test_nn.py::test_parameterizations_exact_on_gaussian[eps-cos]": Moved(
        1.9, _NN_PARAMS),
    "tests/test_nn.py::test_parameterizations_exact_on_gaussian[eps-ve]": Moved(
        1.9, _NN_PARAMS),
    "tests/test_nn.py::test_parameterizations_exact_on_gaussian[score-vp]": Moved(
        1.9, _NN_PARAMS),
    "tests/test_nn.py::test_parameterizations_exact_on_gaussian[score-cos]": Moved(
        1.9, _NN_PARAMS),
    "tests/test_nn.py::test_parameterizations_exact_on_gaussian[x0-vp]": Moved(
        1.9, _NN_PARAMS),
    "tests/test_nn.py::test_parameterizations_exact_on_gaussian[x0-ve]": Moved(
        1.9, _NN_PARAMS),
    "tests/test_compose_exact.py::test_composed_normalizer_importance_sampling_4d_x64": Moved(
        5.5, "a Monte Carlo estimate of the normalizer: the quadrature test of the composed "
        "density's normalization stays in the default suite", x64=True),
}


def _moved(nodeid: str) -> Moved | None:
    return SLOW_TESTS.get(nodeid) or SLOW_TESTS.get(nodeid.split("[", 1)[0])


def _moved_file_costs(x64: bool = False) -> dict[str, float]:
    """CPU seconds of each file's SLOW_TESTS entries (float32 ones, or float64 with ``x64``)."""
    costs: dict[str, float] = {}
    for nodeid, m in SLOW_TESTS.items():
        if m.x64 == x64:
            f = nodeid.split("::", 1)[0]
            costs[f] = costs.get(f, 0.0) + m.cost_s
    return costs


def pytest_addoption(parser):
    parser.addoption(
        "--lane-shard", default=None, metavar="I/N",
        help="run only the I-th (0-based) of N groups of test files, the files dealt to the "
             "groups by their measured cost (FILE_COST_S) so that the groups take about equal "
             "time; `make test` runs two such groups side by side on 2 cores")
    parser.addoption(
        "--lane-costs", default="default", choices=("default", "slow"),
        help="which measured file costs deal the --lane-shard groups: the default suite's "
             "(FILE_COST_S) or the slow lane's (SLOW_FILE_COST_S and the SLOW_TESTS entries, "
             "`make test-slow`)")
    parser.addoption(
        "--slow-set", default="all", choices=("all", "listed"),
        help="which slow tests a `-m slow` run selects: all of them, or only the default-suite "
             "tests moved to the slow lane in tests/conftest.py (SLOW_TESTS; with --lane-shard "
             "the files are dealt by those tests' costs), `make test-slow SLOW=listed`")


#: Measured CPU seconds of each test file's default-lane float32 tests (see SLOW_TESTS for the
#: conditions; measured with the tests of SLOW_TESTS already out): only used to deal files to
#: ``--lane-shard`` groups of equal cost; a file not listed counts as DEFAULT_FILE_COST_S.
FILE_COST_S: dict[str, float] = {
    "tests/test_factor_mixture.py": 34.0,
    "tests/test_notebooks.py": 20.0,  # notebook 08 and the helper / pairing checks
    "tests/test_methods_contract.py": 35.0,
    "tests/test_nn.py": 22.0,
    "tests/test_distributions_exact.py": 20.0,
    "tests/test_models.py": 31.5,
    "tests/test_distributions.py": 29.0,
    "tests/test_churn.py": 14.5,
    "tests/test_dpm_solver.py": 28.0,
    "tests/test_flow.py": 21.0,
    "tests/test_mixture_diagonal.py": 20.0,
    "tests/test_driver_tiles.py": 19.0,
    "tests/test_claims.py": 22.0,
    "tests/test_locality_learned.py": 18.0,
    "tests/test_multiprocess.py": 17.0,
    "tests/test_compose_exact.py": 22.0,
    "tests/test_compose.py": 16.0,
    "tests/test_bench.py": 9.0,
    "tests/test_noise.py": 14.0,
    "tests/test_calibration.py": 68.5,
    "tests/test_mixture_of_models.py": 8.0,
    "tests/test_locality.py": 8.0,
    "tests/test_experiments.py": 5.0,
    "tests/test_likelihood.py": 4.0,
    "tests/test_distributions_errors.py": 1.5,
    "tests/test_trust_sampling.py": 52.6,
    "tests/test_verify_fc_projective.py": 19.5,
    "tests/test_trust_outputs.py": 17.0,
    "tests/test_samplers_columns.py": 30.0,
    "tests/test_samplers_sharding.py": 0.0,  # its one test is in SLOW_TESTS
}
DEFAULT_FILE_COST_S = 10.0

#: The same for the float32 slow tests of each file's own (``@pytest.mark.slow``; the SLOW_TESTS
#: entries are added by their measured costs) in the slow lane (``make test-slow``), ESTIMATED
#: from the tests' sizes (samples x steps x distinct compiled programs) relative to the default
#: suite's measured costs unless marked measured; a file not listed (no slow float32 tests:
#: collected and deselected) counts as DEFAULT_SLOW_FILE_COST_S.
SLOW_FILE_COST_S: dict[str, float] = {
    "tests/test_scenarios.py": 600.0,
    "tests/test_locality_learned.py": 600.0,  # trains the full-mode network (~6 min on 2 cores)
    "tests/test_distributions.py": 300.0,
    "tests/test_samplers_mcmc.py": 120.0,  # measured cold
    "tests/test_smc.py": 150.0,
    "tests/test_peer_suite.py": 150.0,
    "tests/test_samplers.py": 100.0,
    "tests/test_calibration.py": 60.0,
    "tests/test_methods_contract.py": 50.0,
    "tests/test_churn.py": 60.0,
    "tests/test_bench.py": 43.0,
    "tests/test_dpm_solver.py": 50.0,
    "tests/test_claims.py": 40.0,
    "tests/test_sampler_law.py": 30.0,
    "tests/test_trust_sampling.py": 30.0,
    "tests/test_notebooks.py": 140.0,
    "tests/test_experiments.py": 30.0,
    "tests/test_training.py": 30.0,
    "tests/test_likelihood.py": 20.0,
    "tests/test_nnx.py": 20.0,
    "tests/test_verify_stats.py": 20.0,
    "tests/test_multiprocess.py": 20.0,
    "tests/test_driver_tiles.py": 16.0,
    "tests/test_orbax_checkpoints.py": 10.0,
    "tests/test_report_figures.py": 10.0,
    "tests/test_same_law.py": 10.0,
    "tests/test_distributions_exact.py": 5.0,
}
DEFAULT_SLOW_FILE_COST_S = 1.0

#: What each of the two lanes runs after its float32 group, in FILE_COST_S units: `make test`
#: lane A the property-based suite, lane B the float64 tests; `make test-slow` lane B the slow
#: float64 tests (estimated). The dealing starts from these loads so that the lanes finish
#: together. Measured on a clean clone (cold cache, idle 2 cores, .ci/run at 02cb7dc): property
#: suite 40 s and float64 tests 152 s of wall time, while the two float32 groups took 1043 s for
#: 846 s of FILE_COST_S (1.233 s of wall per unit), hence 40 / 1.233 and 152 / 1.233. That run
#: dealt from (51, 215): lane A 11:18, lane B 9:16; dealt from these (clean clone at ca1a058):
#: lane A 8:57, lane B 11:04. The per-file estimates in FILE_COST_S, not these two numbers, now
#: limit the balance: re-measure them per file to bring the lanes together.
LANE_AFTER_S = (32.4, 123.3)
SLOW_LANE_AFTER_S = (0.0, 100.0)


def _lane_shard(config) -> tuple[int, int] | None:
    value = config.getoption("--lane-shard")
    if not value:
        return None
    try:
        i, n = (int(v) for v in value.split("/"))
    except ValueError:
        raise pytest.UsageError(f"--lane-shard {value!r}: expected I/N") from None
    if not 0 <= i < n:
        raise pytest.UsageError(f"--lane-shard {value!r}: need 0 <= I < N")
    return i, n


def pytest_ignore_collect(collection_path, config):
    """With ``--lane-shard I/N``, test files of the other groups are not even imported (their
    imports cost CPU in every process). The groups are dealt from the ``test_*.py`` files of
    this folder that are not ``--ignore``d, the same list in every shard."""
    shard = _lane_shard(config)
    here = Path(__file__).parent
    if shard is None or collection_path.parent != here or not collection_path.name.startswith(
            "test_") or collection_path.suffix != ".py":
        return None
    ignored = {Path(p).resolve() for p in config.getoption("ignore") or ()}
    files = sorted(f"tests/{f.name}" for f in here.glob("test_*.py") if f.resolve() not in ignored)
    slow = config.getoption("--lane-costs") == "slow"
    listed = config.getoption("--slow-set") == "listed"
    if listed:  # only files with moved float32 tests take part
        files = [f for f in files if f in _moved_file_costs()]
    if f"tests/{collection_path.name}" in lane_shard_files(files, *shard, slow=slow,
                                                            listed=listed):
        return None
    return True


def lane_shard_files(files: list[str], shard: int, shards: int, *, slow: bool = False,
                     listed: bool = False) -> set[str]:
    """The files of group ``shard`` of ``shards``: greedy longest-processing-time dealing (each
    file, costliest first, to the group with the least cost so far; ties by name), a
    deterministic function of the file names and FILE_COST_S (``slow``: SLOW_FILE_COST_S plus
    the file's SLOW_TESTS entries; ``listed``: only those entries)."""
    moved_x64 = sum(_moved_file_costs(x64=True).values())  # lane B's float64 process
    if listed:
        costs, default, after = _moved_file_costs(), 0.0, (0.0, moved_x64)
    elif slow:
        moved = _moved_file_costs()
        costs = {f: SLOW_FILE_COST_S.get(f, DEFAULT_SLOW_FILE_COST_S) + moved.get(f, 0.0)
                 for f in set(SLOW_FILE_COST_S) | set(moved)}
        default = DEFAULT_SLOW_FILE_COST_S
        after = (SLOW_LANE_AFTER_S[0], SLOW_LANE_AFTER_S[1] + moved_x64)
    else:
        costs, default, after = FILE_COST_S, DEFAULT_FILE_COST_S, LANE_AFTER_S
    # what each lane of `make test` / `make test-slow` runs after its float32 group
    loads = list(after) if shards == 2 else [0.0] * shards
    groups: list[set[str]] = [set() for _ in range(shards)]
    for f in sorted(files, key=lambda f: (-costs.get(f, default), f)):
        g = loads.index(min(loads))
        groups[g].add(f)
        loads[g] += costs.get(f, default)
    return groups[shard]


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config, items):
    skip_x64 = pytest.mark.skip(reason="float64 test: run with JAX_ENABLE_X64=1 (make test does)")
    # `slow` tests run only when selected explicitly with -m (make test-slow); a bare `pytest`
    # therefore runs the default suite.
    skip_slow = pytest.mark.skip(reason="slow test: select with -m slow (make test-slow)")
    run_slow = "slow" in (config.getoption("-m") or "")
    listed_only = config.getoption("--slow-set") == "listed"
    keep, drop = [], []
    for item in items:
        moved = _moved(item.nodeid)
        if "slow" in item.keywords:  # slow in its own file (whether listed or not)
            if listed_only:
                drop.append(item)
                continue
        elif moved is not None:
            item.add_marker(pytest.mark.slow(reason=f"{moved.cost_s:g} s; {moved.why}"))
        keep.append(item)
        if "x64" in item.keywords and not X64:
            item.add_marker(skip_x64)
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(autouse=True)
def _strict_promotion():
    with jax.numpy_rank_promotion("raise"), jax.numpy_dtype_promotion("strict"):
        yield


@pytest.fixture
def key(request) -> jax.Array:
    """A fixed key, distinct per test (crc32 of the test's node id)."""
    return jax.random.key(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def float_dtype():
    return jax.numpy.float64 if X64 else jax.numpy.float32


def pytest_report_header(config):
    return (f"jax {jax.__version__}, x64={X64}, devices={jax.devices()}, "
            f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')}, compilation cache={CACHE_DIR or 'off'}")
