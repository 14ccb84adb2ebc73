"""The model protocol (``cj.Model``) for every model type of the library: declared capabilities
match behaviour, ``CapabilityError`` names what is missing, batched scores equal the vmapped
score, models are ``jit`` arguments (new numbers, no retrace), ``as_model`` is idempotent."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _distribution_cases import FAMILY_NAMES, make_case

import composition_jax as cj
from composition_jax._pytree import pytree_dataclass

SCH = cj.VPSchedule()
D = 3


# --------------------------------------------------------------------------------------------
# Foreign models (not cj.Model subclasses): the exact noised N(mean, v I) under SCH.
def _gauss_fns(mean, v):
    def log_prob(x, t):
        a, s = SCH.alpha(t), SCH.sigma(t)
        var = a * a * v + s * s
        r = x - a * mean
        return -0.5 * (jnp.dot(r, r) / var + x.shape[0] * jnp.log(2 * jnp.pi * var))

    def score(x, t):
        a, s = SCH.alpha(t), SCH.sigma(t)
        return -(x - a * mean) / (a * a * v + s * s)

    def denoise(x, t):
        a, s = SCH.alpha(t), SCH.sigma(t)
        return mean + a * v * (x - a * mean) / (a * a * v + s * s)

    return log_prob, score, denoise


@pytree_dataclass
class ForeignPytree:
    """A pytree of arrays with .score/.log_prob/.denoise, not a cj.Model."""

    mean: jax.Array
    v: jax.Array

    def score(self, x, t):
        return _gauss_fns(self.mean, self.v)[1](x, t)

    def log_prob(self, x, t):
        return _gauss_fns(self.mean, self.v)[0](x, t)

    def denoise(self, x, t):
        return _gauss_fns(self.mean, self.v)[2](x, t)


class ForeignPlain:
    """Not a pytree: adapted as static data. Only .score and .log_prob_and_score."""

    dim = D

    def score(self, x, t):
        return _gauss_fns(jnp.ones(D), 0.5)[1](x, t)

    def log_prob_and_score(self, x, t):
        lp, sc, _ = _gauss_fns(jnp.ones(D), 0.5)
        return lp(x, t), sc(x, t)


def _diffused(name, seed=0):
    return cj.diffuse(make_case(name, seed=seed).dist, SCH)


def _diag_mixture(seed=0, iso=False):
    rng = np.random.default_rng(seed)
    k = 3
    var = rng.uniform(0.3, 1.5, size=(k, 1) if iso else (k, D)) * np.ones((k, D))
    covs = np.stack([np.diag(v) for v in var])
    return cj.diffuse(cj.GaussianMixture(jnp.asarray(rng.dirichlet(np.ones(k)), jnp.float32),
                                         jnp.asarray(rng.normal(size=(k, D)), jnp.float32),
                                         jnp.asarray(covs, jnp.float32)), SCH)


def _factor_mixture():
    rng = np.random.default_rng(1)
    return cj.diffuse(cj.FactorMixture(jnp.full((D, 2), 0.5, jnp.float32),
                                       jnp.asarray(rng.normal(size=(D, 2, 1)), jnp.float32),
                                       jnp.full((D, 2), 0.4, jnp.float32)), SCH)


def _score_net():
    net = cj.nn.MLPScoreNet(dim=D, hidden=8, depth=1)
    params = cj.nn.init_params(net, jax.random.key(0))
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    leaves = [p + 0.3 * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)]
    return cj.nn.ScoreNetModel(net, jax.tree.unflatten(tree, leaves), SCH)


_LP0, _S0, _D0 = _gauss_fns(jnp.zeros(D), 1.0)
FN_SCORE = cj.FunctionModel(_S0, dim=D)
FN_FULL = cj.FunctionModel(_S0, log_prob_fn=_LP0, denoise_fn=_D0, dim=D)
FN_LP = cj.FunctionModel(_S0, log_prob_fn=_LP0, dim=D)

# name -> (builder, has_log_prob, has_denoise, columns_native)
CASES = {
    # batched particle-minor scores: Gaussians (and their closed-form pushforwards), diagonal /
    # isotropic mixtures, FactorMixtures, products and pushforwards of those
    **{f"diffused_{n}": ((lambda n=n: _diffused(n)), True, True, n in ("gaussian", "pf_gaussian"))
       for n in FAMILY_NAMES},
    "diffused_diag_mixture": (_diag_mixture, True, True, True),
    "diffused_iso_mixture": (lambda: _diag_mixture(iso=True), True, True, True),
    "diffused_factor_mixture": (_factor_mixture, True, True, True),
    "compose": (lambda: cj.compose(_diffused("gaussian", 1),
                                   [_diffused("mixture", 2), _diffused("pf_mixture", 3)],
                                   weights=jnp.array([1.0, 0.5])), True, True, False),
    "compose_columns": (lambda: cj.compose(_diag_mixture(0), [_diag_mixture(1, iso=True)]),
                        True, True, True),
    "compose_score_only_input": (lambda: cj.compose(FN_SCORE, [_diffused("mixture", 2)]),
                                 False, False, False),
    "compose_no_denoise_input": (lambda: cj.compose(_diffused("gaussian", 1), [FN_LP]),
                                 True, False, False),
    "linear_combination": (lambda: cj.linear_combination(
        [_diffused("gaussian", 1), _diag_mixture(2)], jnp.array([0.7, 0.6])), True, False, True),
    "linear_combination_full_mixture": (lambda: cj.linear_combination(
        [_diffused("gaussian", 1), _diffused("mixture", 2)], jnp.array([0.7, 0.6])), True, False,
        False),
    "linear_combination_columns": (lambda: cj.linear_combination(
        [_diag_mixture(1), _diag_mixture(2)], jnp.array([0.7, 0.6])), True, False, True),
    "guidance": (lambda: cj.guidance(_diffused("mixture", 2), _diffused("gaussian", 1), 2.5),
                 True, True, False),
    "mixture_of_models": (lambda: cj.MixtureOfModels(
        [_diffused("gaussian", 1), _diffused("mixture", 2)], jnp.array([0.3, 0.7])),
        True, True, False),
    "function_score_only": (lambda: FN_SCORE, False, False, False),
    "function_full": (lambda: FN_FULL, True, True, False),
    "function_plain_callable": (lambda: cj.as_model(_S0), False, False, False),
    "adapter_pytree": (lambda: cj.as_model(ForeignPytree(jnp.array([0.5, -1.0, 2.0]),
                                                         jnp.array(0.7))), True, True, False),
    "adapter_plain": (lambda: cj.as_model(ForeignPlain()), True, False, False),
    "score_net": (_score_net, False, True, False),
}

def _evaluate(model, X, t):
    """Everything the protocol promises, for particles ``X (n, d)``; what is computed depends
    only on the (static) declarations."""
    out = {
        "score": jax.vmap(model.score, (0, None))(X, t),
        "batched": model.batched_score(X, t),
        "columns": model.score_columns(X.T, t).T,
    }
    if model.has_log_prob:
        out["log_prob"] = jax.vmap(model.log_prob, (0, None))(X, t)
        out["grad_log_prob"] = jax.vmap(jax.grad(model.log_prob), (0, None))(X, t)
        out["lps"] = jax.vmap(model.log_prob_and_score, (0, None))(X, t)
    if model.has_denoise:
        out["denoise"] = jax.vmap(model.denoise, (0, None))(X, t)
    return out


def _scaled(model, c):
    """The same model with every floating leaf multiplied by ``c`` (new numbers, same tree)."""
    def f(leaf):  # a Python float keeps each leaf's dtype and weak type
        floating = isinstance(leaf, float) or jnp.issubdtype(jnp.result_type(leaf), jnp.floating)
        return leaf * c if floating else leaf
    return jax.tree.map(f, model)


def _tol(ref):
    """float32 rounding scale for values of magnitude ``ref`` (generous constant)."""
    return 2e-4 * (1.0 + float(np.max(np.abs(np.asarray(ref)))))


@pytest.mark.parametrize("name", list(CASES))
def test_declared_capabilities_match_behaviour(name, key):
    build, has_lp, has_den, cols = CASES[name]
    m = build()
    assert isinstance(m, cj.Model)
    assert (m.has_log_prob, m.has_denoise, m.columns_native) == (has_lp, has_den, cols)
    # hasattr (what older callers ask) agrees with the declaration
    assert hasattr(m, "log_prob") == has_lp and hasattr(m, "log_prob_and_score") == has_lp
    assert hasattr(m, "denoise") == has_den
    assert cj.as_model(m) is m
    d = m.dim or D
    X = 1.5 * jax.random.normal(key, (16, d), jnp.float32)
    t = jnp.asarray(0.3, jnp.float32)
    # a model is a jit argument: new numbers, same tree -> no retrace (a second trace raises)
    chex.clear_trace_counter()
    evaluate = jax.jit(chex.assert_max_traces(_evaluate, n=1))
    out = evaluate(m, X, t)
    score = out["score"]
    chex.assert_shape(score, (16, d))
    assert np.all(np.isfinite(score))
    tol = _tol(score)
    chex.assert_trees_all_close(out["batched"], score, atol=tol, rtol=1e-5)
    chex.assert_trees_all_close(out["columns"], score, atol=tol, rtol=1e-5)
    if has_lp:
        chex.assert_shape(out["log_prob"], (16,))
        chex.assert_trees_all_close(out["grad_log_prob"], score, atol=tol, rtol=1e-4)
        chex.assert_trees_all_close(out["lps"][0], out["log_prob"], atol=_tol(out["log_prob"]),
                                    rtol=1e-5)
        chex.assert_trees_all_close(out["lps"][1], score, atol=tol, rtol=1e-5)
    if has_den:
        a, s = SCH.alpha(t), SCH.sigma(t)
        tweedie = (X + s * s * score) / a
        chex.assert_trees_all_close(out["denoise"], tweedie, atol=_tol(tweedie), rtol=1e-4)
    if jax.tree.leaves(m):
        out2 = evaluate(_scaled(m, 1.01), X, t)
        assert not np.array_equal(out2["score"], score)


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if not (c[1] and c[2])])
def test_missing_capability_raises_capability_error(name):
    m = CASES[name][0]()
    for cap, declared in (("log_prob", m.has_log_prob), ("log_prob_and_score", m.has_log_prob),
                          ("denoise", m.has_denoise)):
        if declared:
            continue
        with pytest.raises(cj.CapabilityError, match=rf"{type(m).__name__} has no {cap}: "):
            getattr(m, cap)
        assert issubclass(cj.CapabilityError, AttributeError) and not hasattr(m, cap)


def test_capability_errors_name_the_missing_input():
    p, q = _diffused("gaussian", 1), _diffused("mixture", 2)
    with pytest.raises(cj.CapabilityError,
                       match=r"Composition has no log_prob: input\(s\) without log_prob: "
                             r"conditionals\[1\]$"):
        cj.compose(p, [q, FN_SCORE]).log_prob  # noqa: B018
    with pytest.raises(cj.CapabilityError,
                       match=r"no log_prob_and_score: input\(s\) without log_prob: background, "
                             r"conditionals\[1\]$"):
        cj.compose(FN_SCORE, [q, FN_SCORE]).log_prob_and_score  # noqa: B018
    with pytest.raises(cj.CapabilityError,
                       match=r"no denoise: input\(s\) without denoise: conditionals\[0\]$"):
        cj.compose(p, [FN_LP, q]).denoise  # noqa: B018
    with pytest.raises(cj.CapabilityError, match=r"no log_prob: input\(s\) without log_prob: "
                                                 r"models\[1\]$"):
        cj.linear_combination([p, FN_SCORE], jnp.ones(2)).log_prob  # noqa: B018
    with pytest.raises(cj.CapabilityError, match=r"LinearCombination has no denoise: .*sum to one"):
        cj.linear_combination([p, q], jnp.ones(2)).denoise  # noqa: B018
    with pytest.raises(cj.CapabilityError, match=r"denoise: input\(s\) without denoise: models\[1\]"):
        cj.MixtureOfModels([p, FN_LP], jnp.array([0.5, 0.5])).denoise  # noqa: B018
    with pytest.raises(cj.CapabilityError, match=r"FunctionModel has no denoise: no denoise_fn"):
        FN_LP.denoise  # noqa: B018
    with pytest.raises(cj.CapabilityError, match=r"the wrapped ForeignPlain has no callable "
                                                 r"\.denoise"):
        cj.as_model(ForeignPlain()).denoise  # noqa: B018
    with pytest.raises(cj.CapabilityError, match=r"ScoreNetModel has no log_prob"):
        _score_net().log_prob  # noqa: B018
    # nested: the outer composition names its input, the inner one its own
    inner = cj.compose(p, [FN_SCORE])
    with pytest.raises(cj.CapabilityError, match=r"without log_prob: conditionals\[0\]$"):
        cj.compose(p, [inner]).log_prob  # noqa: B018


def test_as_model_adapters_and_idempotence():
    # foreign pytree of arrays: its leaves stay leaves (a jit argument), capabilities read once
    obj = ForeignPytree(jnp.zeros(D), jnp.array(1.0))
    m = cj.as_model(obj)
    assert isinstance(m, cj.Model) and cj.as_model(m) is m
    chex.assert_trees_all_equal(jax.tree.leaves(m), jax.tree.leaves(obj))
    # foreign object that is not a pytree: static (no leaves), capabilities read once
    plain = ForeignPlain()
    pm = cj.as_model(plain)
    assert jax.tree.leaves(pm) == [] and cj.as_model(pm) is pm and pm.dim == D
    assert (pm.has_log_prob, pm.has_denoise) == (True, False)
    plain.denoise = lambda x, t: x  # added after adaptation: not part of the declaration
    assert not pm.has_denoise and not hasattr(pm, "denoise")
    # the adapter's log_prob comes from the object's log_prob_and_score
    x, t = jnp.ones(D), jnp.asarray(0.4)
    chex.assert_trees_all_close(pm.log_prob(x, t), plain.log_prob_and_score(x, t)[0])
    # functions
    fm = cj.as_model(_S0)
    assert isinstance(fm, cj.FunctionModel) and cj.as_model(fm) is fm
    # library models are returned as they are
    for build in (lambda: _diffused("mixture"), _score_net,
                  lambda: cj.compose(_diffused("gaussian"), [_diffused("mixture")])):
        mm = build()
        assert cj.as_model(mm) is mm
    # a composition of foreign objects holds adapters and is itself a jit argument
    comp = cj.compose(obj, [ForeignPlain()])
    assert isinstance(comp.background, cj.Model) and isinstance(comp.conditionals[0], cj.Model)
    assert comp.has_log_prob and not comp.has_denoise


def test_as_model_rejects_non_models():
    g = cj.Gaussian(jnp.zeros(2), jnp.eye(2))
    with pytest.raises(TypeError, match=r"model is a Gaussian \(a clean t = 0 law.*cj\.diffuse"):
        cj.as_model(g)
    with pytest.raises(TypeError, match=r"conditionals\[0\] is a GaussianMixture"):
        cj.as_model(make_case("mixture").dist, "conditionals[0]")
    with pytest.raises(TypeError, match=r"model must be a model .* got int"):
        cj.as_model(3)


def test_model_is_abstract_and_subclassable():
    with pytest.raises(TypeError):
        cj.Model()  # score is abstract

    @pytree_dataclass
    class Shifted(cj.Model):
        """A user model declaring log_prob (and nothing else)."""

        shift: jax.Array
        has_log_prob = True

        def score(self, x, t):
            return -(x - self.shift)

        def _log_prob(self, x, t):
            r = x - self.shift
            return -0.5 * jnp.dot(r, r)

    m = Shifted(jnp.ones(2))
    assert cj.as_model(m) is m and not m.has_denoise and not m.columns_native
    x = jnp.array([0.5, 2.0])
    chex.assert_trees_all_close(jax.grad(m.log_prob)(x, 0.5), m.score(x, 0.5))
    chex.assert_trees_all_close(m.log_prob_and_score(x, 0.5), (m.log_prob(x, 0.5), m.score(x, 0.5)))
    with pytest.raises(cj.CapabilityError, match=r"Shifted has no denoise: Shifted does not "
                                                 r"declare it"):
        m.denoise  # noqa: B018
    # composes with library models; the composition's declarations follow the inputs'
    comp = cj.compose(m, [cj.diffuse(cj.Gaussian(jnp.zeros(2), jnp.eye(2)), SCH)])
    assert comp.has_log_prob and not comp.has_denoise


def test_adapted_models_keep_columns_declarations():
    """``as_model`` keeps a model's ``columns_native`` and ``score_columns``; plain functions and
    foreign objects without them get the vmapped default."""
    dm = _diag_mixture()
    cols = [cj.as_model(m).columns_native for m in (dm, _S0, ForeignPlain())]
    assert cols == [True, False, False]
    X, t = jax.random.normal(jax.random.key(0), (D, 4)), jnp.asarray(0.5)
    var = SCH.alpha(t) ** 2 + SCH.sigma(t) ** 2  # _S0: the score of N(0, I) noised
    chex.assert_trees_all_close(cj.as_model(_S0).score_columns(X, t), -X / var, rtol=1e-5,
                                atol=1e-6)
    chex.assert_trees_all_close(cj.as_model(dm).score_columns(X, t), dm.score_columns(X, t))


def test_score_shape_traces_once_per_model_structure():
    """``score_shape`` (the samplers' and ``score_locality``'s up-front shape check) reuses one
    trace for every model of the same structure -- new parameters included -- instead of
    retracing the score on each call; a model that is not a pytree still works; shapes and
    dtypes are those of ``jax.eval_shape``."""
    from composition_jax.models import score_shape

    traces = []

    @pytree_dataclass
    class Counting(cj.Model):
        w: jax.Array

        def score(self, x, t):
            traces.append(1)
            return -self.w * x

    x = jax.ShapeDtypeStruct((D,), jnp.float32)
    t = jax.ShapeDtypeStruct((), jnp.float32)
    for w in (1.0, 2.0, 3.0):
        out = score_shape(Counting(jnp.float32(w)), x, t)
        assert out.shape == (D,) and out.dtype == jnp.float32
    assert len(traces) == 1
    score_shape(Counting(jnp.float32(1.0)), jax.ShapeDtypeStruct((D + 1,), jnp.float32), t)
    assert len(traces) == 2  # a new shape is a new trace

    class Plain:  # not a pytree: the bound-method path
        def score(self, x, t):
            return 2.0 * x

    assert score_shape(Plain(), x, t).shape == (D,)
    # the samplers' check still names the shapes
    with pytest.raises(ValueError, match=r"must return shape \(3,\)"):
        cj.sample(jax.random.key(0), cj.FunctionModel(lambda x, t: x[:2]), SCH, (4, D),
                  steps=2)
