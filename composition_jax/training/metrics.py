r"""Accuracy of a learned score against an exact one (Fisher divergence per noise level).

For a model ``s_theta`` and the exact noised family ``p_t = cj.diffuse(dist, schedule)``:

``F(t) = E_{x ~ p_t} |s_theta(x, t) - grad log p_t(x)|^2``  (the Fisher divergence of ``p_t``
from the model's implied law, Hyvärinen 2005; the quantity DSM minimises up to a constant),
and ``R(t) = F(t) / E_{x ~ p_t} |grad log p_t(x)|^2`` (relative error).

Both are Monte Carlo averages over ``n`` *exact* samples of ``p_t``; standard errors are the sample
standard deviation over ``sqrt(n)`` (for ``R`` by the delta method on the ratio of means, using
the same samples). The samples, the exact score and the model are evaluated in one jitted call.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._pytree import pytree_dataclass, static_field
from ..models import as_model

__all__ = ["FisherReport", "fisher_divergence"]


@pytree_dataclass
class FisherReport:
    """Per-time results, each of shape ``(len(ts),)`` (NumPy arrays).

    Attributes:
      ts: the times.
      fisher: ``F(t)``; ``fisher_se``: its Monte Carlo standard error.
      score_norm2: ``E|grad log p_t|^2``; ``score_norm2_se``: its standard error.
      relative: ``F(t) / E|grad log p_t|^2``; ``relative_se``: delta-method standard error.
      sigma2_fisher: ``sigma(t)^2 F(t)`` (the eps-prediction error, comparable across ``t``).
      n: samples per time.
    """

    ts: Any
    fisher: Any
    fisher_se: Any
    score_norm2: Any
    score_norm2_se: Any
    relative: Any
    relative_se: Any
    sigma2_fisher: Any
    n: int = static_field(default=0)

    def mean(self) -> tuple[float, float]:
        """``(mean over t of F(t), its standard error)`` (independent samples per ``t``)."""
        f, se = np.asarray(self.fisher), np.asarray(self.fisher_se)
        return float(f.mean()), float(np.sqrt(np.sum(se**2)) / f.size)

    def to_dict(self) -> dict:
        return {
            k: (np.asarray(getattr(self, k)).tolist() if k != "n" else self.n)
            for k in (
                "ts", "fisher", "fisher_se", "score_norm2", "score_norm2_se",
                "relative", "relative_se", "sigma2_fisher", "n",
            )
        }


def fisher_divergence(
    model: Any, exact: Any, ts: Any, *, key: jax.Array, n: int = 4096
) -> FisherReport:
    r"""Score error of ``model`` against the exact noised family ``exact`` at each time in ``ts``.

    Args:
      model: a model (anything :func:`~composition_jax.models.as_model` accepts: an object
        with ``.score(x, t)`` on one sample, or a plain ``score_fn(x, t)``).
      exact: an exact noised family with ``.score(x, t)`` and ``.sample(key, n, t)``, e.g.
        ``cj.diffuse(dist, schedule)`` for the distribution the model was trained on.
      ts: times in ``[0, 1]``, shape ``(m,)``.
      key: PRNG key (times use independent sub-keys).
      n: exact samples per time.

    Returns:
      A :class:`FisherReport`. Monte Carlo estimates (exact samples and exact scores; the only
      randomness is the sampling of ``x ~ p_t``).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int >= 2, got {n!r}")
    from ..distributions import Distribution

    if isinstance(exact, Distribution) or not (
        callable(getattr(exact, "score", None)) and callable(getattr(exact, "sample", None))
    ):
        raise TypeError(
            f"exact must have .score(x, t) and .sample(key, n, t) (e.g. cj.diffuse(dist, "
            f"schedule)), got {type(exact).__name__}"
        )
    model = as_model(model, "model")
    mdim, edim = model.dim, getattr(exact, "dim", None)
    if mdim is not None and edim is not None and mdim != edim:
        raise ValueError(f"model has dim {mdim}, exact has dim {edim}")
    ts_np = np.asarray(ts, dtype=float)
    if ts_np.ndim != 1 or ts_np.size == 0:
        raise ValueError(f"ts must be a non-empty 1-D array of times, got shape {ts_np.shape}")
    if np.any(ts_np < 0) or np.any(ts_np > 1):
        raise ValueError(f"ts must lie in [0, 1], got {ts_np.tolist()}")
    ts_j = jnp.asarray(ts_np, dtype=jnp.result_type(float))
    d2, e2 = _fisher_impl_for_n(int(n))(model, exact, ts_j, key)
    d2, e2 = np.asarray(d2, np.float64), np.asarray(e2, np.float64)
    f, fse = d2.mean(1), d2.std(1, ddof=1) / np.sqrt(n)
    s2, s2se = e2.mean(1), e2.std(1, ddof=1) / np.sqrt(n)
    rel = f / s2
    # delta method for a ratio of correlated means
    cov = np.array([np.cov(a, b)[0, 1] for a, b in zip(d2, e2)]) / n
    # var(f/s2) ~ (var f - 2 rel cov + rel^2 var s2) / s2^2  (no division by f: fine at f = 0)
    rel_se = np.sqrt(np.maximum(fse**2 - 2 * rel * cov + rel**2 * s2se**2, 0.0)) / s2
    sched = getattr(exact, "schedule", None)
    sig2 = (
        np.asarray(jax.vmap(sched.sigma2)(ts_j), np.float64) if sched is not None
        else np.full_like(f, np.nan)
    )
    return FisherReport(ts_np, f, fse, s2, s2se, rel, rel_se, sig2 * f, n=int(n))


_CACHE: dict[int, Any] = {}


def _fisher_impl_for_n(n: int):
    """One jitted evaluator per sample count ``n`` (static); models and times are arguments."""
    if n not in _CACHE:

        @jax.jit
        def impl(model, exact, ts, key):
            def one(args):
                t, k = args
                x = exact.sample(k, n, t)
                t = t.astype(x.dtype)
                s_model = jax.vmap(model.score, in_axes=(0, None))(x, t)
                s_exact = jax.vmap(exact.score, in_axes=(0, None))(x, t)
                return jnp.sum((s_model - s_exact) ** 2, -1), jnp.sum(s_exact**2, -1)

            keys = jax.random.split(key, ts.shape[0])
            return jax.lax.map(one, (ts, keys))

        _CACHE[n] = impl
    return _CACHE[n]
