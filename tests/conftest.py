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
  go while the cache is over 2 GiB. The full read happens only after a session that was cut
  short (a session leaves a mark in the cache folder while it runs).
* Each test process lowers its programs in a reused MLIR context per thread (JAX creates one per
  lowering, which is half of the lowering time of the suite's small programs): the same module
  text, so the same compiled programs and cache keys (tests/test_compile_cache.py). Measured side
  by side on 2 cores, each float32 group in two processes at once, empty caches (2026-12-02):
  group 0 in 181 s instead of 198 s, group 1 in 177 s instead of 194 s.
  ``COMPOSITION_JAX_TEST_FRESH_MLIR=1`` lowers as JAX does.
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

# The command line's own compilation cache (composition_jax._compile_cache) stays off in the
# suite's processes and the CLI subprocesses they start: the suite's cache is the one above (or
# none, `make test JAX_CACHE_DIR=`), never the user's folder.
os.environ["COMPOSITION_JAX_COMPILE_CACHE"] = "off"

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


def _reuse_mlir_contexts(uses: int = 256) -> bool:
    """Lower up to ``uses`` programs in one MLIR context per thread instead of a new context per
    lowering (JAX's ``make_ir_context``, which loads every dialect: ~5 ms, and about half of the
    lowering time of the suite's thousands of small programs). The lowered module is the same
    text, so the compiled program and its persistent-cache key are the same
    (tests/test_compile_cache.py compares the text). A context keeps the types and attributes it
    interned until it is replaced: ``uses`` bounds that. Test processes only; set
    ``COMPOSITION_JAX_TEST_FRESH_MLIR=1`` to lower as JAX does. Returns whether it is on."""
    if os.environ.get("COMPOSITION_JAX_TEST_FRESH_MLIR", "") not in ("", "0"):
        return False
    try:
        from jax._src.interpreters import mlir
    except ImportError:  # another jax layout: lower as jax does
        return False
    make = getattr(mlir, "make_ir_context", None)
    if make is None or getattr(make, "_reused", False):
        return make is not None
    import threading

    local = threading.local()

    def reused_context():
        n = getattr(local, "n", uses)
        if n >= uses:
            local.ctx, n = make(), 0
        local.n = n + 1
        return local.ctx

    reused_context._reused = True
    reused_context._fresh = make
    mlir.make_ir_context = reused_context
    return True


MLIR_CONTEXTS_REUSED = _reuse_mlir_contexts()


# The sweep of truncated entries and the per-process marks are the library's (the command line
# uses the same cache machinery): composition_jax._compile_cache.
from composition_jax._compile_cache import close_session, open_session


def pytest_sessionstart(session):
    if CACHE_DIR and Path(CACHE_DIR).is_dir():
        open_session(CACHE_DIR)


def pytest_sessionfinish(session, exitstatus):
    if CACHE_DIR:
        close_session(CACHE_DIR)


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
    # measured through the fork server, per notebook apportioned by wall time; the ninth, 08, is
    # moved below). Each notebook checks its own numbers, which the unit tests of the modules it
    # calls check against exact oracles by default; the default suite keeps the check helper,
    # the no-bare-assert rule and the .ipynb pairing of every notebook.
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
        21.0, "three samplers at n = 20000 (its shear case is moved too, below): "
        "test_claim26_exact_laws_disagree_iff_fc_fails keeps the exact-law claim for both cases "
        "in the default suite"),
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
        5.6, "SIGTERM to a CLI subprocess (its SIGINT case is moved too, below): the handler's "
        "deferral of signals during a commit stays default "
        "(test_trust_outputs::test_signals_during_a_commit_are_deferred)"),
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
        11.3, "the projective check on samples: test_projective_two_sample_block (a 0.5-sd "
        "shift of a 2-D block rejected) stays default"),
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


def _group(file: str, why: str, costs: dict[str, float],
           x64: tuple[str, ...] = ()) -> dict[str, Moved]:
    """SLOW_TESTS entries of one file that share a reason."""
    return {f"{file}::{name}": Moved(cost, why, name in x64) for name, cost in costs.items()}


# Moved after e6cb44e to bring `make test` to ~5 minutes on 2 cores (costs: seconds from pytest's
# durations in `make test`, cold, two lanes on 2 cores, at e6cb44e's compiler settings (LLVM
# level 0); test_same_law_family_wise_fpr, test_nnx_checkpoint_of_another_network_is_refused and
# test_sample_moments[diag] with the loop emitters instead): statistical and end-to-end cases,
# and further parametrizations of checks that keep a case in the default suite. Each reason
# names what the default suite keeps.
for _file, _why, _costs, _x64 in (
    ('tests/test_calibration.py',
     ("the decision rules' calibration by repetition (hundreds of simulated verdicts each): "
      "the rule's family-wise level at its own null (test_decision_rule_family_wise_fpr), its "
      "power against a 10% variance error (the 0.9 case), the KS bound and the floors table "
      "stay default"),
     {'test_decision_rule_flags_ten_percent_variance_error[1.1]': 12.8,
      'test_decision_rule_level_when_the_effect_equals_its_floor': 22.8,
      'test_projective_family_wise_fpr': 33.0,
      'test_same_law_family_wise_fpr': 20.9},
     ()),
    ('tests/test_scenarios.py',
     ('the zoo end to end (sampling and deciding scenarios): its registry, name-derived keys, '
      'outside registration and errors stay default; the decision rules are calibrated by '
      "test_calibration's default cases"),
     {'test_clutter_bayes_mixture_is_mean_of_conditionals': 12.6,
      'test_factor_mixture_model_is_exact': 6.6,
      'test_material_rejections_use_effect_floors': 12.1,
      'test_mixture_model_is_the_exact_mixture': 8.6,
      'test_scenarios_minimal_verdicts[names0]': 20.1,
      'test_scenarios_minimal_verdicts[names1]': 27.4},
     ()),
    ('tests/test_factor_mixture.py',
     ('further shapes and kinds of the same exact comparisons: the float64 oracle (full, '
      'first shape), the product of factors in float64, grad log p, the marginals and the '
      'isotropic sample moments stay default'),
     {'test_matches_float64_oracle[diag-shape4]': 5.0,
      'test_matches_float64_oracle[full-shape3]': 5.2,
      'test_matches_product_of_gaussian_mixtures[full]': 5.3,
      'test_moments_equal_the_product_moments': 5.6,
      'test_sample_moments[full]': 8.5,
      'test_sample_moments[diag]': 4.9},
     ()),
    ('tests/test_training.py',
     ('trains networks end to end: the DSM loss of an exact network against its closed form, '
      'the Fisher oracles, time sampling and checkpoint round trips stay default'),
     {'test_resume_is_bit_identical': 21.8,
      'test_smoke_training_reduces_loss_and_fisher': 8.5},
     ()),
    ('tests/test_same_law.py',
     ('Monte Carlo runs of the joint two-sample test: its standard errors against Monte '
      'Carlo, Holm, the closed forms, the rejection of a 10% variance error and same-key '
      'reports stay default'),
     {'test_energy_and_mmd_match_numpy': 7.7,
      'test_exact_samples_pass_and_report_shape': 9.1,
      'test_rejects_correlated_blocks_with_exact_marginals[-0.3]': 4.2,
      'test_rejects_correlated_blocks_with_exact_marginals[0.3]': 13.0},
     ()),
    ('tests/test_mixture_diagonal.py',
     ('a second size of the fast-vs-general comparison ([16-6-0.01-False] stays default, as '
      'does the float64 scipy check) and a sample-moment check of the sampler'),
     {'test_diagonal_sample_moments': 4.7,
      'test_fast_path_matches_general_path_float32[2-8-0.2-False]': 16.1},
     ()),
    ('tests/test_compose_exact.py',
     ('sample moments and a float32 twin of default float64 checks: '
      'test_factorized_gaussian_tuple_x64, the quadrature normalization of the other cases '
      'and the product-of-mixtures FC test stay default'),
     {'test_composed_log_density_is_normalized_composition_quadrature_x64[mixture-2]': 4.3,
      'test_composed_samples_have_the_right_moments': 10.4,
      'test_factorized_gaussian_tuple_float32': 9.4},
     ('test_composed_log_density_is_normalized_composition_quadrature_x64[mixture-2]',)),
    ('tests/test_methods_contract.py',
     ('more methods of a contract the default suite checks for the others (the counts of '
      'model evaluations per step and per run of every other method; prefix invariance of the '
      'shared counter-based noise for every other method)'),
     {'test_info_counts_every_model_evaluation_of_the_run[annealed_hmc]': 3.7,
      'test_info_counts_every_model_evaluation_of_the_run[annealed_mala]': 3.7,
      'test_info_counts_every_model_evaluation_of_the_run[predictor_corrector]': 3.8,
      'test_sample_prefix_invariance_and_alias_equals_instance[predictor_corrector]': 4.7},
     ()),
    ('tests/test_notebooks.py',
     ("the last notebook's quick run (all nine now run here): the notebooks' check helper, "
      'their pairing and the no-bare-assert rule stay default; what each notebook calls is '
      'unit-tested against exact oracles by default'),
     {'test_notebook_runs_in_quick_mode[08_samplers_and_model_calls]': 26.2},
     ()),
    ('tests/test_samplers.py',
     ('sample-moment checks of further methods and schedules and run-level bookkeeping: the '
      'moments of the other method/schedule cases against sampler_law, jit == eager, no '
      'retrace, the model-call counts of the other methods and the non-finite report stay '
      'default'),
     {'test_composition_moments_match_sampler_law': 6.1,
      'test_model_calls_counts_the_evaluations_made[euler_maruyama]': 3.6,
      'test_moments_match_sampler_law[ddim-opts4-vp-5-uniform]': 3.6,
      'test_moments_match_sampler_law[ddpm-opts6-cos-20-log_snr]': 4.2,
      'test_prefix_reproducibility_with_pilot_steps': 4.7,
      'test_return_info_and_trajectory': 4.0},
     ()),
    ('tests/test_trust_outputs.py',
     ("signals delivered to a CLI subprocess end to end: the handler's deferral of signals "
      'during a commit (test_signals_during_a_commit_are_deferred) and every refusal and '
      'write- error path stay default'),
     {'test_bench_sigterm_keeps_partial_results_flagged': 4.3,
      'test_signal_leaves_nothing_behind[2-130]': 17.4},
     ()),
    ('tests/test_samplers_mcmc.py',
     ('the annealed samplers reaching target laws statistically: the one-level moves of '
      'annealed MALA and HMC against the exact law stay default'),
     {'test_every_method_reaches_ring_mixture[annealed_hmc-opts8]': 7.8,
      'test_every_method_reaches_ring_mixture[predictor_corrector-opts5]': 4.0,
      'test_mcmc_corrects_coarse_reverse_sde_on_composition[annealed_mala]': 7.5},
     ()),
    ('tests/test_trust_sampling.py',
     ('a second layout of the same silent-run check ([columns] stays default), a composition '
      "check over many families and a 4-device subprocess: the non-finite reports' default "
      'tests cover eager, jit, vmap and both layouts'),
     {'test_composition_check_any_family_and_size_cap': 5.5,
      'test_finite_run_is_silent_and_samples_bit_identical[rows]': 4.7,
      'test_sharded_runs_report_once': 9.2},
     ()),
    ('tests/test_nnx.py',
     ('NNX training, checkpoints and sampling against linen end to end: the converted '
      'parameters giving the same function, float64 inputs, the conversion refusals and the '
      'errors stay default'),
     {'test_compose_and_sample_match_linen': 4.3,
      'test_nnx_checkpoint_of_another_network_is_refused': 15.3,
      'test_nnx_checkpoint_round_trip_and_resume': 5.6,
      'test_nnx_model_is_a_pure_pytree': 3.8,
      'test_nnx_trainer_follows_the_linen_trajectory': 8.8},
     ()),
    ('tests/test_reproduce.py',
     ('`composition-jax reproduce` end to end in a subprocess: the interrupted-run, mismatch-'
      "exit and unknown-scenario tests stay default; CI also runs the benchmark's quick mode"),
     {'test_reproduce_writes_report_and_respects_force': 22.4},
     ()),
    ('tests/test_locality_learned.py',
     ('trains small networks: the exact-score locality claim '
      '(test_locality::test_eq17_empty_is_block_local_and_bayes_is_not) and the partition / '
      'error tests of this file stay default'),
     {'test_bayes_coupled_learner_fails_the_rule': 6.7,
      'test_exact_fc_composition_is_local_and_bayes_is_not': 9.5,
      'test_leakage_grows_the_off_block_part_and_noise_shrinks_it': 4.1},
     ()),
    ('tests/test_claims.py',
     ('claim 26 on samples (three samplers at n = 20000; its rotation case is moved too): the '
      'exact-law form of the claim (test_claim26_exact_laws_disagree_iff_fc_fails) and the '
      "diagnostic's errors and null stay default"),
     {'test_claim26_sampler_disagreement_feature[shear-False]': 17.8},
     ()),
    ('tests/test_distributions.py',
     ('sample moments and prefix consistency of three more families (the Gaussian, mixture, '
      'empirical and the other pushforwards keep their cases in the default suite)'),
     {'test_sample_moments_and_prefix_consistency[3-product]': 4.6,
      'test_sample_moments_and_prefix_consistency[7-pf_orth_product]': 3.9,
      'test_sample_moments_and_prefix_consistency[8-pf_blockdiag_product]': 2.7},
     ()),
    ('tests/test_locality.py',
     ('the standard error of the off-block ratio against the spread over particle sets '
      '(repetitions): the locality claim on exact scores and the closed-form precision stay '
      'default'),
     {'test_off_block_ratio_se_matches_the_spread_over_particle_sets': 9.5},
     ()),
    ('tests/test_driver_tiles.py',
     ('every tiling sampled: the tile plan, its policy, errors and that tiles cover every '
      'particle once stay default, and test_columns_equal_rows keeps the tiled body == rows'),
     {'test_same_samples_for_every_tiling[euler_maruyama]': 14.3},
     ()),
    ('tests/test_smc.py',
     ('SMC runs: the Feynman-Kac rate against the PDE rate and unbiased resampling stay '
      'default'),
     {'test_same_key_and_n_same_output_eager_and_jit': 7.3,
      'test_tilt_w4_reached_and_normalizer': 6.1},
     ()),
    ('tests/test_orbax_checkpoints.py',
     ('a trained model and every corruption of every file: the round trips of typed keys, '
      'sharded targets, same-step replacement and refusals stay default'),
     {'test_every_file_corruption_is_refused_or_harmless': 3.9,
      'test_trained_model_round_trips_bit_for_bit': 9.1},
     ()),
    ('tests/test_nonlinear.py',
     ('sample moments of a non-linear pushforward: its map, inverse, log-det and lemma 6.2 on '
      'a grid stay default'),
     {'test_log_prob_normalized_score_and_samples': 6.9},
     ()),
    ('tests/test_dpm_solver.py',
     ("sample moments of one more schedule/layout: the solver's update by hand, first-step "
      'identity, rows == columns and weak order stay default'),
     {'test_sample_moments_match_exact_law[flow-columns]': 3.8},
     ()),
    ('tests/test_flow.py',
     ('trains a velocity network on the loss: the exact conversions, the noised laws of every '
      'family and composing velocities stay default'),
     {'test_flow_matching_loss_is_velocity_error': 8.1},
     ()),
    ('tests/test_verify_fc_projective.py',
     ('a failing projective check on samples: the two-sample block test (a shift rejected) '
      'stays default'),
     {'test_projective_fails_on_shared_hybrid': 3.9},
     ()),
    ('tests/test_likelihood.py',
     ("Hutchinson's estimator over repeats: the exact-trace likelihoods (mixture, FC and "
      'non-FC compositions) stay default'),
     {'test_hutchinson_is_unbiased_within_its_standard_error': 5.4},
     ()),
    ('tests/test_samplers_columns.py',
     ('batch independence in the columns layout: prefix invariance over batch sizes for every '
      'method (test_methods_contract) and columns == rows stay default'),
     {'test_columns_batch_independent_and_x_init': 6.0},
     ()),
    ('tests/test_trust_numerics.py',
     ('bfloat16 twin of the low-precision check (float16 stays default)'),
     {'test_low_precision_gaussian_and_full_mixture[bfloat16-0.0078125]': 5.0},
     ()),
    ('tests/test_report_figures.py',
     ('every plot kind drawn: the figure laws, titles, legends and the locality figure stay '
      'default'),
     {'test_every_plot_kind_is_drawn': 6.8},
     ()),
    ('tests/test_experiments.py',
     ("the ring event probabilities against scipy's noncentral chi-square and Monte Carlo: "
      'the learned-vector decision rule, the reverse-direction event bound and the Wilson '
      'intervals stay default'),
     {'test_learned_vector_radius_event_rule': 5.5},
     ()),
    ('tests/test_gap_fisher.py',
     ('an FC product tuple at rounding: the closed-form Gaussian gap, blockwise evaluation '
      'and the float64 score oracle stay default'),
     {'test_fisher_gap_fc_product_tuple_is_rounding': 5.5},
     ()),
    ('tests/test_verify_heuristics_gap.py',
     ('the Monte Carlo mixture gap: the exact Gaussian gaps stay default'),
     {'test_mixture_gap_fisher': 5.1},
     ()),
    # Added with the eager oracles' single programs (costs: one pytest process at the suite's
    # flags, 2 cores otherwise idle).
    ('tests/test_distributions_exact.py',
     ('further families of the same eager-call check (one program, equal to jax.jit bit for '
      'bit): the mixture and the pushforward of a product (Diffused, Product, '
      'LinearPushforward and mixture code) stay default'),
     {f'test_eager_call_is_one_program_and_equals_jit_bitwise[{name}]': cost
      for name, cost in (('product', 8.1), ('pf_orth_product', 7.2), ('pf_mixture', 4.9),
                         ('gaussian', 4.2), ('empirical', 3.7), ('pf_empirical', 3.6),
                         ('pf_gaussian', 2.1))},
     ()),
    ('tests/test_nn.py',
     ('the eps parameterization of the eager network check: the velocity case (the longest '
      'output conversion) stays default'),
     {'test_eager_network_call_is_one_program_and_equals_jit_bitwise[eps]': 3.8},
     ()),
):
    SLOW_TESTS.update(_group(_file, _why, _costs, _x64))


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
    parser.addoption(
        "--x64-files", action="store_true",
        help="import only the test files whose source names the x64 marker (the float64 "
             "process of `make test`, which selects -m x64: a file that never names the marker "
             "has no float64 test, and importing it costs CPU)")


#: Measured seconds of each test file's default-lane float32 tests: the sum of pytest's
#: per-test durations (setup + call + teardown, every test) in `make test` on 2 cores, cold
#: compilation cache, the suite's compiler flags (one run on 2026-12-01 at 12cdc38; a file's
#: cost depends a little on its group: the first file to compile a shared small program pays
#: for it). Only used to deal files to ``--lane-shard`` groups of equal cost; a file not listed
#: (or under 0.5 s) counts as DEFAULT_FILE_COST_S.
FILE_COST_S: dict[str, float] = {
    "tests/test_methods_contract.py": 48.9,
    "tests/test_nn.py": 37.4,
    "tests/test_calibration.py": 35.0,
    "tests/test_score_columns.py": 26.0,
    "tests/test_factor_mixture.py": 25.1,
    "tests/test_models.py": 24.0,
    "tests/test_trust_sampling.py": 22.8,
    "tests/test_trust_numerics.py": 22.0,
    "tests/test_samplers_columns.py": 20.1,
    "tests/test_verify_fc_projective.py": 18.4,
    "tests/test_multiprocess.py": 17.0,
    "tests/test_samplers.py": 15.9,
    "tests/test_distributions.py": 13.6,
    "tests/test_mixture_diagonal.py": 12.3,
    "tests/test_same_law.py": 12.1,
    "tests/test_nnx.py": 11.5,
    "tests/test_schedules.py": 10.8,
    "tests/test_experiments.py": 10.5,
    "tests/test_distributions_exact.py": 10.3,
    "tests/test_verify_stats.py": 9.3,
    "tests/test_bench.py": 9.2,
    "tests/test_report_figures.py": 9.1,
    "tests/test_training.py": 9.0,
    "tests/test_churn.py": 8.9,
    "tests/test_compose.py": 8.9,
    "tests/test_noise.py": 8.9,
    "tests/test_trust_checkpoints.py": 7.1,
    "tests/test_mixture_of_models.py": 6.7,
    "tests/test_fused_composition.py": 6.6,
    "tests/test_flow.py": 6.5,
    "tests/test_law_check.py": 6.5,
    "tests/test_orbax_checkpoints.py": 6.3,
    "tests/test_compile_cache.py": 6.2,
    "tests/test_nonlinear.py": 6.0,
    "tests/test_locality_learned.py": 5.9,
    "tests/test_samplers_mcmc.py": 5.9,
    "tests/test_trust_outputs.py": 5.7,
    "tests/test_locality.py": 5.0,
    "tests/test_compose_exact.py": 4.9,
    "tests/test_smc.py": 4.3,
    "tests/test_driver_tiles.py": 4.1,
    "tests/test_gap_fisher.py": 3.4,
    "tests/test_verify_heuristics_gap.py": 3.0,
    "tests/test_claims.py": 2.7,
    "tests/test_dpm_solver.py": 2.5,
    "tests/test_sampler_law.py": 1.3,
    "tests/test_distributions_errors.py": 1.2,
    "tests/test_smoke.py": 1.1,
}
DEFAULT_FILE_COST_S = 1.0

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
    "tests/test_experiments.py": 80.0,  # with the two learned-vector minimal pipelines (47 s)
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

#: What each of the two lanes runs after its float32 group, in FILE_COST_S units (measured the
#: same way, the same run): `make test` lane A the property-based suite (47.4 s), lane B the
#: float64 tests (136.5 s); `make test-slow` lane B the slow float64 tests (estimated). The
#: dealing starts from these loads so that the lanes finish together.
LANE_AFTER_S = (47.4, 136.5)
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
    imports cost CPU in every process); with ``--x64-files``, nor are files without float64
    tests. The groups are dealt from the ``test_*.py`` files of this folder that are not
    ``--ignore``d, the same list in every shard."""
    shard = _lane_shard(config)
    here = Path(__file__).parent
    if collection_path.parent != here or not collection_path.name.startswith(
            "test_") or collection_path.suffix != ".py":
        return None
    if config.getoption("--x64-files") and "x64" not in collection_path.read_text("utf-8"):
        return True
    if shard is None:
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
            f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')}, compilation cache={CACHE_DIR or 'off'}, "
            f"MLIR contexts={'reused' if MLIR_CONTEXTS_REUSED else 'fresh per lowering'}")
