r"""The shared driver: ``cj.sample`` (a ``lax.scan`` over a time grid, vmapped over particles).

Design:

* Everything static -- the method object (a frozen, hashable :class:`~.methods.SamplerMethod`
  whose fields are its options), shape, steps, ``t_min``, grid, layout, mesh -- is part of a
  hashable configuration; one jitted function is built (and cached) per configuration. The model
  and the schedule are pytree ARGUMENTS of that function, so new model or schedule numbers reuse
  the compiled sampler (no retrace).
* Randomness: the key is split once into ``(k_init, k_normal, k_uniform)``; at step ``i`` the
  driver draws ONE batched ``(n, m, d)`` block of counter-based normals from
  ``fold_in(k_normal, i)`` (:mod:`.noise`: Threefry on the counter ``(particle, slot)``, one
  hash per normal). Row ``j`` is a function of ``(key, i, j)`` only (tested), so particle
  ``j``'s randomness depends only on ``(key, j)``: the first ``m`` particles of a run with
  ``n > m`` equal a run with ``m`` particles, under jit and sharded over devices (up to about
  one ulp where XLA vectorizes the per-particle arithmetic differently for another ``n``, e.g.
  the final denoising; the columns tiles alone are bit-identical for any tiling, tested).
* Two compiled runs, one chosen once from declarations (:func:`choose_layout`): rows
  (:func:`_rows_run`: particles ``(n, d)``, ``method.step`` vmapped) or particle-minor tiles
  (:func:`_columns_run`: ``method.init``/``method.step`` on ``(d, B)`` tiles with
  ``model.score_columns``) for element-wise methods. Both share the time grid and keys
  (:func:`_grid_and_keys`) and the final denoising, non-finite accounting and
  :class:`SampleInfo` (:func:`_tail`). The
  tile size ``B`` is a policy of the backend (:func:`tile_plan`): cache-sized tiles on CPU, one
  memory-bounded tile per device on GPU/TPU; the samples do not depend on it.
* Memory ``O(n d)``: only the current particles are carried; ``record_every=k`` keeps every
  ``k``-th state through a nested scan.
* ``mesh=``: particles are sharded along the mesh's batch axis for the whole run with
  ``with_sharding_constraint`` on the state and the noise (no gather).
* No silent non-finite output (``nonfinite=``): the compiled program counts the non-finite
  final particles (one pass over ``(n, d)``, outside ``shard_map``: one count for a sharded run)
  and returns the count with the samples; it holds no host callback, so JAX stores it in its
  persistent compilation cache (programs with host callbacks are never stored, and every new
  process would compile them again). Called eagerly, ``cj.sample`` reads the count after the
  run (it waits for the run: one int32) and warns or raises in Python. Only when ``cj.sample``
  is itself being traced (inside the caller's ``jit``/``vmap``/``grad``) is the report staged
  into the caller's program: a ``jax.debug.callback`` under ``lax.cond(count > 0)``, wrapped
  in a ``custom_vmap`` whose batching rule sums the counts, so ``vmap`` of ``cj.sample`` gives
  ONE report (that caller's program then holds a host callback).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify
from jax.sharding import NamedSharding, PartitionSpec

from ..distributions.gaussian import _SMALL_INNER
from ..models import as_model, score_shape
from ..schedules import Schedule
from . import noise
from .grids import GRIDS, time_grid
from .methods import METHODS, SamplerMethod, denoise, resolve_method
from .noise import draw_normals, draw_uniforms

__all__ = [
    "CompositionWarning", "NonFiniteError", "NonFiniteWarning", "SampleInfo", "SampleResult",
    "particle_mesh", "sample",
]

class SampleInfo(NamedTuple):
    """Diagnostics of a run.

    Attributes:
      times: ``(steps + 1,)`` the time grid, from ``t_max`` down to ``t_min``.
      nonfinite: ``(steps,)`` int, particles with a non-finite coordinate after each step.
      nonfinite_final: ``()`` int, non-finite particles among the returned samples.
      acceptance: ``(steps,)`` mean Metropolis acceptance probability per level (MCMC methods),
        else ``None``.
      step_size: ``(steps,)`` mean MCMC step size per level, else ``None``.
      model_calls: ``()`` int, evaluations of the model per particle over the run:
        ``steps * method.model_calls_per_step`` (score, ``log_prob_and_score`` or one column
        of ``score_columns``; predictor, correctors and Metropolis moves included) plus one
        for the final denoising step (``model.denoise`` or the Tweedie formula) when
        ``denoise_final``. The pilot ensemble of tuned methods is not included (see
        ``pilot_model_calls``): its cost does not grow with ``n``.
      pilot_model_calls: ``()`` int, evaluations of the model by the pilot ensemble of a tuned
        method over the run, ALL pilot particles together: ``method.pilot_model_calls(steps)``
        (``n_pilot`` times the evaluations of one pilot particle; ``predictor_corrector`` with
        ``corrector_step="snr"``, ``annealed_mala``/``annealed_hmc`` with ``adapt=True``),
        ``0`` for the other methods. The run's total is
        ``n * model_calls + pilot_model_calls``.
    """

    times: jax.Array
    nonfinite: jax.Array
    nonfinite_final: jax.Array
    acceptance: Any = None
    step_size: Any = None
    model_calls: Any = None
    pilot_model_calls: Any = None


class SampleResult(NamedTuple):
    """``samples (n, d)``, ``info`` (:class:`SampleInfo`), ``trajectory`` ``(R, n, d)`` or
    ``None`` (states at steps ``0, k, 2k, ...``, before the final denoising)."""

    samples: jax.Array
    info: SampleInfo
    trajectory: Any = None


@dataclasses.dataclass(frozen=True)
class _Config:
    method: SamplerMethod
    shape: tuple
    steps: int
    t_min: float
    grid: str
    rho: float
    denoise_final: bool
    record_every: int | None
    return_info: bool
    check: bool
    mesh: Any
    batch_axis: Any
    dtype: Any
    has_x_init: bool
    layout: str = "rows"
    nonfinite: str = "warn"  # "ignore" also when check=True (checkify reports it)
    tile: int = 0  # columns layout: the most particles per tile (tile_plan); 0 for rows
    compiler_options: tuple = ()  # sorted (name, value) pairs for jax.jit(compiler_options=)


# --------------------------------------------------------------------------------- trust
class NonFiniteWarning(RuntimeWarning):
    """``cj.sample`` returned particles with a ``nan``/``inf`` coordinate
    (``nonfinite="warn"``, the default). Silence with ``nonfinite="ignore"`` or the
    ``warnings`` module (``warnings.filterwarnings("ignore", category=cj.NonFiniteWarning)``)."""


class NonFiniteError(FloatingPointError, RuntimeError):
    """``cj.sample(..., nonfinite="raise")`` produced particles with a ``nan``/``inf`` coordinate.

    Raised as is when ``cj.sample`` is called eagerly (after the run). Under the caller's
    ``jit`` it is raised by a host callback while the program runs, and JAX reports it as a
    ``jax.errors.JaxRuntimeError`` (a ``RuntimeError``) whose message contains this one: catch
    ``RuntimeError`` to handle both.
    """


class CompositionWarning(UserWarning):
    """The model is a composition whose exact ``t = 0`` law is known not to exist (e.g. not
    normalizable: ``cj.composed_distribution`` raises ``ValueError`` for the same inputs), so the
    samples, finite as they may be, approximate no distribution."""


NONFINITE_MODES = ("warn", "raise", "ignore")
_NO_STEP = np.iinfo(np.int32).max


def _nonfinite_message(count: int, n: int, steps: int, first: int, t_first: float,
                       mode: str = "warn") -> str:
    """The text of the non-finite report. ``first``: index of the first step after which a
    particle was non-finite, ``steps`` when every step ended finite (the final denoising made
    them), ``-1`` when the per-step counts were not kept (``return_info=False``)."""
    if 0 <= first < steps:
        where = f"; the first appeared after step {first} of {steps} (t = {t_first:.4g})"
    elif first == steps:
        where = ("; every particle was finite after the last step: the final denoising step "
                 "(denoise_final=True) produced them")
    else:
        where = ""
    return (
        f"cj.sample: {count} of {n} particles are non-finite (nan/inf) at the end of the "
        f"run{where}. The score or the step overflowed (a large guidance scale or weight, too "
        "few steps, a model evaluated outside its range). Investigate with return_info=True "
        "(info.nonfinite: the count after each step) or check=True (raises at the first bad "
        "step); "
        + ("pass nonfinite='warn' or 'ignore' to get the samples anyway." if mode == "raise" else
           "pass nonfinite='raise' to make this an error or nonfinite='ignore' to silence it.")
    )


def _on_nonfinite(mode: str, n: int, steps: int, count, first, t_first) -> None:
    """Host side of the traced report (runs in a ``jax.debug.callback``, only when
    ``count > 0``)."""
    msg = _nonfinite_message(int(count), n, steps, int(first), float(t_first), mode)
    if mode == "raise":
        raise NonFiniteError(msg)
    warnings.warn(msg, NonFiniteWarning, stacklevel=1)


@functools.lru_cache(maxsize=512)
def _reporter(mode: str, n: int, steps: int):
    """``report(count, first, t_first)``: a host callback under ``lax.cond(count > 0)``, staged
    into the CALLER's program when ``cj.sample`` is traced (never into the compiled run itself).

    A ``custom_vmap``: the ``vmap`` rule sums the counts (and keeps the earliest step) and makes
    ONE unbatched report over ``axis_size * n`` particles, instead of JAX's default of unrolling
    one callback per batch element (and running it unconditionally, ``cond`` becoming
    ``select``). Returns ``count`` (unused; the callback's effect keeps the call alive).
    """

    @jax.custom_batching.custom_vmap
    def report(count, first, t_first):
        jax.lax.cond(
            count > 0,
            lambda: jax.debug.callback(
                functools.partial(_on_nonfinite, mode, n, steps), count, first, t_first
            ),
            lambda: None,
        )
        return count

    @report.def_vmap
    def _rule(axis_size, in_batched, count, first, t_first):
        c_b, f_b, t_b = in_batched
        total = (jnp.sum(count) if c_b else count * axis_size).astype(count.dtype)
        if f_b:
            masked = jnp.where(first < 0, _NO_STEP, first)
            j = jnp.argmin(masked)
            f = jnp.where(masked[j] == _NO_STEP, -1, masked[j])
            t = t_first[j] if t_b else t_first
        else:
            f = first
            t = jnp.min(t_first) if t_b else t_first
        return _reporter(mode, n * axis_size, steps)(total, f, t), False

    return report


def _nonfinite_stats(x, per_step, times, steps: int) -> tuple:
    """``(count, first, t_first)`` of the final particles ``x (n, d)`` (see
    :func:`_nonfinite_message`); ``per_step`` is ``None`` when the per-step counts are not kept
    (counting them would cost one more pass over the particles per step)."""
    count = jnp.sum(~jnp.all(jnp.isfinite(x), axis=-1)).astype(jnp.int32)
    if per_step is None:
        return count, jnp.int32(-1), jnp.asarray(jnp.nan, times.dtype)
    bad = per_step > 0
    first = jnp.where(jnp.any(bad), jnp.argmax(bad), steps).astype(jnp.int32)
    return count, first, times[jnp.minimum(first + 1, steps)]


def _check_nonfinite_mode(nonfinite: Any) -> str:
    if not isinstance(nonfinite, str) or nonfinite not in NONFINITE_MODES:
        raise ValueError(
            f"nonfinite must be one of {NONFINITE_MODES} (what to do when particles end "
            f"non-finite), got {nonfinite!r}"
        )
    return nonfinite


@functools.lru_cache(maxsize=8)
def _legacy_key_shape(impl: str) -> tuple:
    del impl  # the cache key: the default PRNG implementation fixes the raw key's shape
    return tuple(jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))).shape)


def check_key(key: Any, name: str = "key") -> None:
    """A typed key of shape ``()`` (``jax.random.key(seed)``) or a legacy raw ``uint32`` key
    (``jax.random.PRNGKey(seed)``); anything else raises ``TypeError`` naming ``name``."""
    legacy = _legacy_key_shape(str(jax.config.jax_default_prng_impl))
    shape, dtype = getattr(key, "shape", None), getattr(key, "dtype", None)
    if isinstance(key, (jax.Array, np.ndarray)):
        if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            if shape == ():
                return
            found = (f"an array of {math.prod(shape)} keys (shape {shape}); pass one key, or "
                     "jax.vmap over the keys")
        elif dtype == np.uint32 and shape == legacy:
            return
        else:
            found = f"an array of shape {shape} and dtype {dtype}"
    else:
        found = f"{type(key).__name__} {key!r}"
    raise TypeError(
        f"{name} must be a JAX PRNG key: pass jax.random.key(seed) (a legacy uint32 key of shape "
        f"{legacy} from jax.random.PRNGKey(seed) also works); got {found}"
    )


# Exact-law check of compositions (Python time, once per model: cached on the identity of the
# arrays involved, which JAX never mutates), skipped when the exact product mixture would have
# more than _MAX_LAW_COMPONENTS components or components x d^3 above _MAX_LAW_FLOPS (its cost:
# about a second of CPU), and not needed when every exponent is >= 0 (see _law_inputs).
_MAX_LAW_COMPONENTS = 4096
_MAX_LAW_FLOPS = 2**27
_LAW_CACHE: OrderedDict = OrderedDict()
_LAW_CACHE_SIZE = 32


def _law_tree(model: Any):
    """``(kind, clean laws, weights)`` of a ``compose``/``guidance``/``linear_combination`` of
    ``cj.diffuse`` families, else ``None``."""
    from ..compose import Composition, LinearCombination
    from ..distributions import Diffused

    if isinstance(model, Composition):
        kind, models = "compose", (model.background,) + tuple(model.conditionals)
    elif isinstance(model, LinearCombination):
        kind, models = "linear", tuple(model.models)
    else:
        return None
    if len(models) < 2 or not all(isinstance(m, Diffused) for m in models):
        return None
    return kind, [m.dist for m in models], model.weights


def _law_inputs(kind: str, dists: list, w: Any):
    """``(background, conditionals, weights)`` for ``composed_distribution``, or ``None`` when
    the numbers are traced, an input has no Gaussian-mixture form, or the exact law would have
    more than ``_MAX_LAW_COMPONENTS`` components."""
    from .._checks import is_concrete
    from ..distributions import Gaussian

    if not is_concrete(dists, w):
        return None
    w = np.asarray(w, np.float64)
    if kind == "linear":
        # prod_i p_i^{w_i} = C[p_0; p_1..] with weights w_1.. when sum w = 1; a product of
        # Gaussians only rescales its precision by s = sum w > 0, so compose with w / s
        s = float(w.sum())
        if abs(s - 1.0) > 1e-6:
            if s <= 0 or not all(isinstance(d, Gaussian) for d in dists):
                return None
            w = w / s
        w = w[1:]
    exps = [1.0 - float(w.sum())] + [float(v) for v in w]
    if min(exps) >= 0.0:
        # exponents e_j >= 0 summing to 1: by Hoelder's inequality int prod p_j^{e_j} <=
        # prod (int p_j)^{e_j} = 1 (and > 0 for these everywhere-positive densities), so the law
        # exists and there is nothing to check (no product mixture is built: at d = 256, K = 64
        # that cost the first call of cj.sample tens of seconds)
        return None
    size = 1
    for d, e in zip(dists, exps):
        # the family's own Gaussian-mixture form (None: none, or too many components)
        mix = d.as_gaussian_mixture(_MAX_LAW_COMPONENTS)
        if mix is None:
            return None
        size *= mix.num_components ** max(0, math.ceil(e - 1e-6))
        if size > _MAX_LAW_COMPONENTS:  # the exact product mixture would cost too much
            return None
    if size * int(dists[0].dim) ** 3 > _MAX_LAW_FLOPS:  # its algebra (d x d per component) too
        return None
    return dists[0], list(dists[1:]), w


def _law_problem(tree: tuple) -> str | None:
    """Why the exact ``t = 0`` law does not exist (the ``ValueError`` of
    ``composed_distribution``), or ``None`` (it exists, has no closed form, or is unknown)."""
    from .._compose_exact import composed_distribution

    try:
        # evaluated now, also when cj.sample is being traced by the caller's jit (the numbers
        # are concrete; without this the operations would be staged and their values unknown)
        with jax.ensure_compile_time_eval():
            args = _law_inputs(*tree)
            if args is None:
                return None
            bg, conds, w = args
            composed_distribution(bg, conds, jnp.asarray(w, jnp.result_type(float)))
    except ValueError as e:
        return str(e) if "not normalizable" in str(e) else None
    except Exception:  # noqa: BLE001 - NotImplementedError (no closed form) and the like
        return None
    return None


def _law_problem_cached(tree: tuple) -> str | None:
    leaves, treedef = jax.tree.flatten(tree[1:])
    try:
        refs = tuple(weakref.ref(leaf) for leaf in leaves)
        key = (tree[0], treedef, tuple(map(id, leaves)))
        hash(key)
    except TypeError:  # a leaf that is not weak-referenceable, or unhashable static data
        return _law_problem(tree)
    hit = _LAW_CACHE.get(key)
    if hit is not None and all(r() is leaf for r, leaf in zip(hit[0], leaves)):
        _LAW_CACHE.move_to_end(key)
        return hit[1]
    problem = _law_problem(tree)
    _LAW_CACHE[key] = (refs, problem)
    while len(_LAW_CACHE) > _LAW_CACHE_SIZE:
        _LAW_CACHE.popitem(last=False)
    return problem


def warn_if_no_law(model: Any, stacklevel: int = 3) -> None:
    """Warn (:class:`CompositionWarning`) when ``model`` composes ``cj.diffuse`` families with
    concrete weights whose exact ``t = 0`` law does not exist. Silent when there is no closed
    form, when numbers are traced, or when the exact product mixture would exceed
    ``_MAX_LAW_COMPONENTS`` (4096) components. Never changes the samples."""
    tree = _law_tree(model)
    if tree is None:
        return
    problem = _law_problem_cached(tree)
    if problem is not None:
        warnings.warn(
            "cj.sample: this composition has no t = 0 law to converge to, so its samples (finite "
            "as they may be) approximate no distribution; cj.composed_distribution raises for "
            f"the same inputs: {problem}",
            CompositionWarning,
            stacklevel=stacklevel,
        )


# --------------------------------------------------------------------------------- validation
def _check_int(v, name, lo=1):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    return int(v)


DRIVER_OPTIONS = (
    "grid", "rho", "denoise_final", "record_every", "return_info", "check", "mesh", "batch_axis",
    "x_init", "dtype", "layout", "tile_size", "nonfinite",
)


def check_shape(shape: Any) -> tuple[int, int]:
    """``shape`` as ``(n, d)`` positive Python ints (the particle array of a sampler), else a
    ``ValueError`` naming it."""
    if (
        not isinstance(shape, (tuple, list))
        or len(shape) != 2
        or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in shape)
        or shape[0] < 1
        or shape[1] < 1
    ):
        raise ValueError(f"shape must be a tuple (n, d) of positive ints, got {shape!r}")
    return int(shape[0]), int(shape[1])


def check_times(schedule: Any, steps: Any, t_min: Any, grid: str) -> tuple[int, float]:
    """Validate ``steps``, ``t_min`` and ``grid`` against ``schedule``."""
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a Schedule, got {type(schedule).__name__}")
    steps = _check_int(steps, "steps")
    try:
        t_min_f = float(t_min)
    except (TypeError, ValueError):
        raise TypeError(f"t_min must be a real number, got {t_min!r}") from None
    if not 0.0 < t_min_f < 1.0:
        raise ValueError(f"t_min must lie in (0, 1), got {t_min_f}")
    if not t_min_f < schedule.t_max:
        raise ValueError(
            f"t_min must be < schedule.t_max = {schedule.t_max}, got {t_min_f}"
        )
    if grid not in GRIDS:
        raise ValueError(f"grid must be one of {GRIDS}, got {grid!r}")
    return steps, t_min_f


def check_model_shape(model: Any, d: int, dtype: Any) -> None:
    """Evaluate ``model.score`` abstractly once (``jax.eval_shape``) and check ``(d,)`` out."""
    x = jax.ShapeDtypeStruct((d,), dtype)
    t = jax.ShapeDtypeStruct((), dtype)
    try:
        out = score_shape(model, x, t)
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"model.score failed on one sample x of shape ({d},) and scalar t: {e}"
        ) from e
    shape = getattr(out, "shape", None)
    if shape != (d,):
        raise ValueError(
            f"model.score(x, t) must return shape ({d},) for x of shape ({d},), got "
            f"{shape if shape is not None else type(out).__name__}"
        )


# --------------------------------------------------------------------------------- driver
# The largest d for which layout="auto" picks the columns layout (measured on XLA:CPU,
# benchmarks/: at d = 2 the columns layout is 1.5-2.5x faster; by d = 64 the (K x d) matmuls
# dominate and both layouts are equal).
COLUMN_MAX_D = 32
# The same for compositions scored in the fused form (``Composition._fused_columns``): their
# columns score is two (sum K x d) products and one softmax per input over the major axis.
# Columns / rows time per particle-step, K = 16 per input, 2 cores (docs/sampling.md): Euler-
# Maruyama 0.45 at d = 16, 0.61-0.74 at d = 32, 0.81-0.88 at d = 64 (k = 1, 2, 4), 1.18 at
# d = 128; Heun 0.25 / 0.51 / 0.72-0.92.
FUSED_COLUMN_MAX_D = 64
#: CPU policy of the columns layout: particles per tile, so that a tile's state, noise and
#: score intermediates stay in a core's caches while it runs through all steps.
COLUMN_TILE = 16384
#: GPU/TPU policy of the columns layout: bytes of state and normals per tile. One tile per
#: device holds every particle unless that exceeds this budget; the score's own intermediates
#: (e.g. a mixture's ``(K, B)`` logits) come on top.
COLUMN_TILE_BYTES = 1 << 30


def _platform(mesh: Any) -> str:
    """The platform the run executes on: the mesh's devices, else JAX's default backend."""
    if mesh is not None:
        return mesh.devices.flat[0].platform
    return jax.default_backend()


def tile_plan(platform: str, d: int, num_normals: int, dtype: Any) -> int:
    """The most particles per tile of the columns layout on ``platform`` (``tile_size=None``).

    ``"cpu"``: :data:`COLUMN_TILE` (cache-sized tiles, run one after the other by ``lax.map``).
    Accelerators (``"gpu"``, ``"tpu"``, ...): as many particles as fit in
    :data:`COLUMN_TILE_BYTES` of state and normals, ``itemsize * d * (2 + num_normals)`` bytes
    per particle (the state before and after a step and the step's normals), a multiple of 8;
    in practice one tile per device, so the device runs every particle in each kernel instead
    of ``n / COLUMN_TILE`` sequential tiles of small kernels.
    """
    if platform == "cpu":
        return COLUMN_TILE
    per_particle = jnp.dtype(dtype).itemsize * d * (2 + num_normals)
    return max(8, COLUMN_TILE_BYTES // per_particle // 8 * 8)


#: XLA options of a sampler run on CPU (``cj.sample(compiler_options=None)``). LLVM emits 256-bit
#: vectors by default even where the CPU has 512-bit ones (AVX-512); the run's elementwise work
#: (the noise's hash and inverse CDF, the update, the mixtures' softmax) is a chain of dependent
#: vector operations per element, so twice the lanes runs it up to twice as fast: measured on 2
#: AVX-512 cores (``benchmarks/README.md``), Euler-Maruyama 1.3-2.0x at d = 64, 1.3-1.5x at
#: d = 2, 1.05-1.3x at d = 256. On a CPU without AVX-512 the option changes nothing.
CPU_COMPILER_OPTIONS = {"xla_cpu_prefer_vector_width": 512}
#: Added on CPU for the columns layout at ``d > 8`` (the mixtures' matrix-product forms):
#: XLA:CPU otherwise hands each product, with the element-wise work and the softmax's
#: reductions over the components (the major axis of the ``(K, n)`` logits), to YNNPACK fusions,
#: which ran those reductions 3-4x slower than XLA's own loops (a (3, 16, 10k) softmax: 64 vs
#: 16 ns per particle); whole runs 1.2-1.8x faster without them at d = 16-64 (fused
#: compositions). At ``d <= 8`` (element-wise difference forms) the YNNPACK fusions are the
#: faster (d = 2: 2.3x), so they stay.
CPU_COLUMN_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def _top_level() -> bool:
    """Whether ``cj.sample`` runs outside any ``jit``/``vmap``/``grad`` trace: JAX accepts
    ``compiler_options`` only on a top-level ``jax.jit`` (JAX's own test for its fast paths;
    False, so no options, should that private function move)."""
    clean = getattr(getattr(jax._src, "core", None), "trace_state_clean", None)
    return bool(clean()) if callable(clean) else False


def default_compiler_options(platform: str, layout: str = "rows", d: int = 0) -> dict:
    """The XLA options of a run with ``compiler_options=None``: on CPU
    :data:`CPU_COMPILER_OPTIONS`, with :data:`CPU_COLUMN_OPTIONS` for the columns layout at
    ``d > 8``; none elsewhere."""
    if platform != "cpu":
        return {}
    if layout == "columns" and d > _SMALL_INNER:
        return {**CPU_COMPILER_OPTIONS, **CPU_COLUMN_OPTIONS}
    return dict(CPU_COMPILER_OPTIONS)


def check_compiler_options(value: Any, platform: str, layout: str = "rows", d: int = 0) -> tuple:
    """``cj.sample``'s ``compiler_options`` as sorted ``(name, value)`` pairs (hashable, part of
    the compiled run's cache key); ``None``: :func:`default_compiler_options`. Empty when
    traced."""
    if value is None:
        value = default_compiler_options(platform, layout, d)
    if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, (str, int, float, bool))
            for k, v in value.items()):
        raise TypeError(
            "compiler_options must be None or a mapping of XLA option names (str) to str, "
            f"int, float or bool values, got {value!r}")
    return tuple(sorted(value.items())) if _top_level() else ()


def jit_run(fn, compiler_options: tuple):
    """``jax.jit(fn)`` compiled with a run's checked options (:func:`check_compiler_options`):
    ``cj.sample``'s and ``smc_sample``'s compiled programs."""
    return jax.jit(fn, compiler_options=dict(compiler_options) or None)


def _check_tile_size(tile_size: Any, layout: str) -> int | None:
    if tile_size is None:
        return None
    if isinstance(tile_size, bool) or not isinstance(tile_size, (int, np.integer)) \
            or tile_size < 1:
        raise ValueError(f"tile_size must be None or an int >= 1, got {tile_size!r}")
    if layout == "rows":
        raise ValueError(
            f"tile_size={tile_size} applies to layout='columns' (particle-minor tiles); it was "
            "given with layout='rows'"
        )
    return int(tile_size)


def _constrainer(cfg: _Config):
    """``tree -> tree`` pinning every leaf's leading (particle) axis to the mesh's batch axis;
    the identity without a mesh."""
    if cfg.mesh is None:
        return lambda tree: tree
    sharding = NamedSharding(cfg.mesh, PartitionSpec(cfg.batch_axis))
    return lambda tree: jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, sharding), tree)


def _grid_and_keys(key, schedule, cfg: _Config):
    """The start of a compiled run (both bodies): the time grid and the keys ``(k_init,
    k_normal, k_uniform)``."""
    times = time_grid(schedule, cfg.steps, cfg.t_min, cfg.grid, rho=cfg.rho, dtype=cfg.dtype)
    return times, jax.random.split(key, 3)


def _tail(model, schedule, x, per_step, traj, times, cfg: _Config):
    """The end of a compiled run (both bodies): final denoising, non-finite accounting,
    :class:`SampleResult`."""
    constrain = _constrainer(cfg)
    if cfg.denoise_final:
        x = constrain(jax.vmap(denoise, (None, None, 0, None))(model, schedule, x, times[-1]))
    finite = jnp.all(jnp.isfinite(x), axis=-1)
    if cfg.check:
        checkify.check(jnp.all(finite), "non-finite final samples")
    out = x
    if cfg.return_info:
        info = SampleInfo(
            times=times,
            nonfinite=per_step["nonfinite"],
            nonfinite_final=jnp.sum(~finite).astype(jnp.int32),
            acceptance=per_step.get("acceptance"),
            step_size=per_step.get("step_size"),
            model_calls=_model_calls(cfg),
            pilot_model_calls=_pilot_model_calls(cfg),
        )
        out = SampleResult(x, info, traj)
    return _finish(out, x, per_step["nonfinite"] if cfg.return_info else None, times, cfg)


def _model_calls(cfg: _Config) -> jax.Array:
    """``SampleInfo.model_calls``: ``()`` int32, model evaluations per particle."""
    return _int32(cfg.steps * int(cfg.method.model_calls_per_step) + int(cfg.denoise_final),
                  "model_calls")


def _pilot_model_calls(cfg: _Config) -> jax.Array:
    """``SampleInfo.pilot_model_calls``: ``()`` int32, the pilot ensemble's evaluations."""
    return _int32(int(cfg.method.pilot_model_calls(cfg.steps)), "pilot_model_calls")


def _int32(v: int, name: str) -> jax.Array:
    if not 0 <= v <= np.iinfo(np.int32).max:
        raise ValueError(f"info.{name} = {v} does not fit in int32 (fewer steps or pilot "
                         "particles, or return_info=False)")
    return jnp.int32(v)


def _rows_run(key, model, schedule, x_init, cfg: _Config):
    """Particles ``(n, d)`` through ``method.step`` vmapped over particles, one batched noise
    block per step; ``record_every`` through a nested scan; then :func:`_tail`."""
    times, keys = _grid_and_keys(key, schedule, cfg)
    method = cfg.method
    n, d = cfg.shape
    dtype = cfg.dtype
    k_init, k_norm, k_unif = keys
    m_norm, m_unif = method.num_normals, method.num_uniforms
    constrain = _constrainer(cfg)
    # per-level parameters from a fixed-size pilot ensemble (its keys are derived from `key`
    # by fold_in, independent of the main particles and of n): computed before the main run
    params = method.tune(model, schedule, key, times, d, dtype)
    if cfg.has_x_init:
        x = x_init.astype(dtype)
    else:
        x = jnp.asarray(schedule.prior_std, dtype) * draw_normals(k_init, 0, n, 1, d, dtype)[:, 0]
    state = constrain(jax.vmap(method.init, (0, None))(constrain(x), times[0]))
    step_v = jax.vmap(method.step, (None, None, 0, None, None, 0, 0, None))

    def one_step(state, i):
        t, s = times[i], times[i + 1]
        normals = (constrain(draw_normals(k_norm, i, n, m_norm, d, dtype)) if m_norm
                   else jnp.zeros((n, 0, d), dtype))
        uniforms = (constrain(draw_uniforms(k_unif, i, n, m_unif, dtype)) if m_unif
                    else jnp.zeros((n, 0), dtype))
        p_i = None if params is None else jax.tree.map(lambda a: a[i], params)
        state, info = step_v(model, schedule, state, t, s, normals, uniforms, p_i)
        state = constrain(state)
        finite = jnp.all(jnp.isfinite(state.position), axis=-1)
        if cfg.check:
            checkify.check(
                jnp.all(finite), "non-finite particles after step {i} (t = {t})", i=i, t=s
            )
        out = {"nonfinite": jnp.sum(~finite).astype(jnp.int32)}
        for name in ("acceptance", "step_size"):
            if name in getattr(info, "_fields", ()):
                out[name] = jnp.mean(getattr(info, name))
        return state, out

    if cfg.record_every is None:
        state, per_step = jax.lax.scan(one_step, state, jnp.arange(cfg.steps))
        return _tail(model, schedule, state.position, per_step, None, times, cfg)
    k = cfg.record_every
    n_chunks, rem = divmod(cfg.steps, k)

    def chunk(state, c):
        state, inf = jax.lax.scan(one_step, state, c * k + jnp.arange(k))
        return state, (state.position, inf)

    x0 = state.position
    state, (traj, per_step) = jax.lax.scan(chunk, state, jnp.arange(n_chunks))
    per_step = jax.tree.map(lambda a: a.reshape((n_chunks * k,) + a.shape[2:]), per_step)
    traj = jnp.concatenate([x0[None], traj], axis=0)
    if rem:
        state, inf2 = jax.lax.scan(one_step, state, n_chunks * k + jnp.arange(rem))
        per_step = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), per_step, inf2)
    return _tail(model, schedule, state.position, per_step, traj, times, cfg)


def _tiles(n: int, devices: int, tile: int) -> tuple[int, int, int]:
    """``(B, T, n_pad)``: tile size ``B`` (the particles per device split evenly into
    ``T = ceil(n_per_device / tile)`` tiles, rounded up to a multiple of 8), tiles per device,
    padded particle count (padding below ``8 T`` particles per device)."""
    per_dev = -(-n // devices)
    T = -(-per_dev // tile)
    B = -(-per_dev // T)
    B = -(-B // 8) * 8
    return B, T, devices * T * B


class _ScoreColumns(NamedTuple):
    """What an element-wise method's ``step`` sees of the model on a ``(d, B)`` tile: its
    ``score`` is the model's particle-minor ``score_columns`` (built inside the compiled run)."""

    score: Any


def _columns_run(key, model, schedule, x_init, cfg: _Config):
    """Particle-minor layout: each device runs its particles tile by tile (``lax.map``), each
    tile through all steps (``lax.scan``) as a ``(d, B)`` array through ``method.init`` /
    ``method.step`` (an element-wise method's state, e.g. DPM-Solver++(2M)'s previous data
    prediction, is then a ``(d, B)`` array too) with ``model.score_columns``, so a tile's
    working set stays in cache. The per-level parameters of ``method.tune`` (EDM churn's
    ``gamma``, 2M's order) are computed once, as in the rows body, and scanned with the steps.
    The noise of particle ``j`` is the same counter-based stream as in the rows body
    (``noise.normals_columns``), so both bodies give the same samples. Then :func:`_tail`."""
    times, keys = _grid_and_keys(key, schedule, cfg)
    method = cfg.method
    n, d = cfg.shape
    dtype = cfg.dtype
    k_init, k_norm, _ = keys
    m_norm = method.num_normals
    # per-level parameters, the same as the rows body's (replicated: outside shard_map)
    params = method.tune(model, schedule, key, times, d, dtype)
    kp_steps = jax.vmap(lambda i: jnp.stack(noise.key_pair(jax.random.fold_in(k_norm, i))))(
        jnp.arange(cfg.steps))
    kp_init = jnp.stack(noise.key_pair(jax.random.fold_in(k_init, 0)))
    n_dev = 1 if cfg.mesh is None else cfg.mesh.shape[cfg.batch_axis]
    B, T, n_pad = _tiles(n, n_dev, cfg.tile)
    view = _ScoreColumns(model.score_columns)
    prior_std = jnp.asarray(schedule.prior_std, dtype)

    def tile(args, dev):
        j, x0 = args
        off = ((dev * T + j) * B).astype(jnp.uint32)
        if cfg.has_x_init:
            X = x0
        else:
            X = prior_std * noise.normals_columns(kp_init, off, B, (1, d), dtype)[0]
        valid = (off + jnp.arange(B, dtype=jnp.uint32)) < n
        no_uniforms = jnp.zeros((0, B), dtype)  # element-wise methods draw none

        def one_step(state, inp):
            i, kp, p_i = inp
            if m_norm:
                z = noise.normals_columns(kp, off, B, (m_norm, d), dtype)
            else:
                z = jnp.zeros((0, d, B), dtype)
            state, _ = method.step(view, schedule, state, times[i], times[i + 1], z,
                                   no_uniforms, p_i)
            bad = jnp.sum(valid & ~jnp.all(jnp.isfinite(state.position), axis=0))
            return state, bad.astype(jnp.int32)

        state, bad = jax.lax.scan(one_step, method.init(X, times[0]),
                                  (jnp.arange(cfg.steps), kp_steps, params))
        return state.position, bad

    if cfg.has_x_init:
        x0 = jnp.pad(x_init.astype(dtype), ((0, n_pad - n), (0, 0)))
        x0 = x0.reshape(n_dev * T, B, d).transpose(0, 2, 1)
    else:
        x0 = jnp.zeros((n_dev * T, 0), dtype)

    def local(x0_local):
        dev = 0 if cfg.mesh is None else jax.lax.axis_index(cfg.batch_axis)
        X, bad = jax.lax.map(lambda a: tile(a, dev), (jnp.arange(T), x0_local))
        return X, bad.sum(0)[None]

    if cfg.mesh is None:
        X, bad = local(x0)
    else:
        spec = PartitionSpec(cfg.batch_axis)
        X, bad = jax.shard_map(local, mesh=cfg.mesh, in_specs=(spec,), out_specs=(spec, spec))(x0)
    x = _constrainer(cfg)(X.transpose(0, 2, 1).reshape(n_pad, d)[:n])
    return _tail(model, schedule, x, {"nonfinite": bad.sum(0)}, None, times, cfg)


def _finish(out, x, per_step, times, cfg: _Config):
    """Attach the non-finite statistics to a run's output (see ``nonfinite`` in
    ``cj.sample``): ``(out, (count, first, t_first))`` for "warn" and "raise", for
    :func:`_report` to act on after the run; ``out`` alone for "ignore". The compiled program
    holds no host callback, so it can be stored in JAX's persistent compilation cache (programs
    with host callbacks are not). Computed outside ``shard_map``: one report for the whole run,
    not one per device."""
    if cfg.nonfinite == "ignore":
        return out
    return out, _nonfinite_stats(x, per_step, times, cfg.steps)


def _report(mode: str, n: int, steps: int, stats: tuple) -> None:
    """Act on a run's non-finite statistics (``mode`` "warn" or "raise").

    Concrete statistics (``cj.sample`` called eagerly): read the count on the host -- this
    waits for the run -- and warn or raise here, in Python, with the caller's frame. Traced
    statistics (``cj.sample`` inside the caller's ``jit``/``vmap``/``grad``): stage the
    conditional host callback (:func:`_reporter`) into the caller's program instead, so the
    report comes while that program runs (and ``vmap`` gives one report for the batch)."""
    if any(isinstance(a, jax.core.Tracer) for a in stats):
        _reporter(mode, n, steps)(*stats)
        return
    count, first, t_first = (np.asarray(a) for a in stats)  # waits for the run
    if int(count):
        msg = _nonfinite_message(int(count), n, steps, int(first), float(t_first), mode)
        if mode == "raise":
            raise NonFiniteError(msg)
        warnings.warn(msg, NonFiniteWarning, stacklevel=3)


def choose_layout(layout: str, method: SamplerMethod, model: Any, d: int, record_every,
                  check: bool) -> str:
    """Resolve ``layout`` ("auto" | "rows" | "columns") for a run (see ``cj.sample``) from the
    method's and the model's declarations: columns need ``method.elementwise`` and no
    ``record_every``/``check``; "auto" picks them when also ``model.columns_native`` and
    ``d <= COLUMN_MAX_D`` (``FUSED_COLUMN_MAX_D`` for a composition scored in the fused form,
    ``Composition._fused_columns``)."""
    if layout not in ("auto", "rows", "columns"):
        raise ValueError(f"layout must be 'auto', 'rows' or 'columns', got {layout!r}")
    ok = (method.elementwise and method.num_uniforms == 0 and record_every is None
          and not check)
    if layout == "columns" and not ok:
        raise ValueError(
            "layout='columns' supports element-wise methods without uniforms "
            f"(method.elementwise: {sorted(k for k, c in METHODS.items() if c.elementwise)} "
            "and the like) without record_every or check; got "
            f"method={method!r} (elementwise={method.elementwise}, "
            f"num_uniforms={method.num_uniforms}), record_every={record_every!r}, "
            f"check={check!r}"
        )
    if layout == "auto":
        fused = bool(getattr(model, "_fused_columns", False))
        max_d = FUSED_COLUMN_MAX_D if fused else COLUMN_MAX_D
        return "columns" if ok and d <= max_d and model.columns_native else "rows"
    return layout


@functools.lru_cache(maxsize=256)
def _build(cfg: _Config):
    # one compiled run per layout: the body chosen once (choose_layout), no dispatcher between
    fn = functools.partial(_rows_run if cfg.layout == "rows" else _columns_run, cfg=cfg)
    if cfg.check:
        return jit_run(checkify.checkify(fn, errors=checkify.user_checks), cfg.compiler_options)
    return jit_run(fn, cfg.compiler_options)


def _auto_mesh(mesh):
    """``jax.make_mesh`` defaults to Explicit axes, with which ``with_sharding_constraint``
    does not apply; rebuild the same device mesh with Auto axes."""
    types = getattr(mesh, "axis_types", None)
    auto = jax.sharding.AxisType.Auto
    if types is None or all(tp == auto for tp in types):
        return mesh
    return jax.sharding.Mesh(mesh.devices, mesh.axis_names, axis_types=(auto,) * len(types))


def particle_mesh(devices: Any = None, axis_name: str = "batch") -> jax.sharding.Mesh:
    """A 1-D mesh over ``devices`` (default: all devices) for ``cj.sample(..., mesh=...)``.

    Particles are independent, so sharding them is the whole parallel strategy: on several GPUs
    or TPU cores it uses them all; on a CPU, XLA runs most element-wise work of one device on
    one thread, so exposing the cores as devices is what uses them: start Python with
    ``XLA_FLAGS=--xla_force_host_platform_device_count=<cores>`` (measured on 2 cores:
    1.3--1.5x at d = 2, see ``benchmarks/``). The samples do not depend on the mesh.
    """
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices must be a non-empty sequence of jax devices")
    return jax.sharding.Mesh(np.asarray(devices), (axis_name,),
                             axis_types=(jax.sharding.AxisType.Auto,))


def sample(
    key: jax.Array,
    model: Any,
    schedule: Schedule,
    shape: tuple[int, int],
    *,
    method: str | SamplerMethod = "euler_maruyama",
    steps: int = 500,
    t_min: float = 1e-3,
    grid: str = "uniform",
    rho: float = 7.0,
    denoise_final: bool = True,
    record_every: int | None = None,
    return_info: bool = False,
    check: bool = False,
    nonfinite: str = "warn",
    mesh: Any = None,
    batch_axis: Any = None,
    x_init: Any = None,
    dtype: Any = None,
    layout: str = "auto",
    tile_size: int | None = None,
    compiler_options: Any = None,
    **options: Any,
) -> Any:
    r"""Draw ``shape = (n, d)`` samples by integrating a reverse-time sampler.

    Starts from the prior ``N(0, schedule.prior_std^2 I)`` at ``schedule.t_max`` (or from
    ``x_init``), takes ``steps`` steps of ``method`` over a decreasing time grid down to
    ``t_min``, then (``denoise_final=True``) one Tweedie step ``E[x_0 | x_{t_min}]``:
    ``model.denoise(x, t_min)`` if the model has it, else ``(x + sigma^2 s(x, t_min)) / alpha``.
    Approximate: the discretization error vanishes as ``steps`` grows (weak order 1 for
    ``euler_maruyama``/``ode_euler``, 2 for ``ode_heun``, measured in the tests); for models with
    affine scores the exact law of the output is :func:`composition_jax.verify.sampler_law`.

    Args:
      key: PRNG key, ``jax.random.key(seed)`` (or a legacy ``jax.random.PRNGKey(seed)``).
        Particle ``i`` depends only on ``(key, i)`` (any batch size, jit, devices).
      model: anything with ``.score(x, t)`` on one sample ``x (d,)`` (pytree models are passed as
        jit arguments: new numbers, no retrace), or a plain function ``score_fn(x, t)``.
        Metropolis methods need ``.log_prob(x, t)`` (unnormalized is fine).
      schedule: the noise schedule the model was trained/derived with.
      shape: ``(n, d)``.
      method: a method object, e.g. ``cj.DDIM(eta=0.3)`` (:class:`~.methods.SamplerMethod`:
        ``cj.EulerMaruyama()``, ``cj.ODEEuler()``, ``cj.ODEHeun()``, ``cj.DDPM()``,
        ``cj.DDIM(eta)``, ``cj.PredictorCorrector(...)``, ``cj.AnnealedMALA(...)``,
        ``cj.AnnealedHMC(...)``, or one of your own), or a string alias from
        ``cj.METHODS`` (``"euler_maruyama"``, ``"ode_euler"``, ``"ode_heun"``, ``"ddpm"``,
        ``"ddim"``, ``"predictor_corrector"``, ``"annealed_mala"``, ``"annealed_hmc"``, and
        those added by ``cj.register_method``) with its options as ``**options``. See
        :mod:`composition_jax.samplers.methods`.
      steps: number of reverse steps (``>= 1``).
      t_min: final time in ``(0, t_max)``.
      grid: ``"uniform"`` (in ``t``), ``"log_snr"``, or ``"edm"`` (with ``rho``).
      denoise_final: apply the final Tweedie denoising step.
      record_every: keep every ``k``-th state in ``trajectory`` (``(steps // k + 1, n, d)``).
      return_info: return a :class:`SampleResult` ``(samples, info, trajectory)``.
      check: raise (via ``jax.experimental.checkify``) when particles become non-finite, at
        the first bad step (replaces the ``nonfinite`` report).
      nonfinite: what to do when returned samples have a ``nan``/``inf`` coordinate:
        ``"warn"`` (default) one :class:`NonFiniteWarning` with the count (and, with
        ``return_info``, the step where they first appeared); ``"raise"`` a
        :class:`NonFiniteError`; ``"ignore"``. The count is computed inside the compiled
        program (one pass over the samples) and returned with them, so the program has no
        host callback and is stored in JAX's persistent compilation cache. Called eagerly,
        ``"warn"`` and ``"raise"`` wait for the run to finish, read the count and warn or
        raise before ``cj.sample`` returns (``"ignore"`` returns at once, dispatch stays
        asynchronous). When ``cj.sample`` is traced by your ``jit``/``vmap``/``grad``, the
        report is a host callback in YOUR program, called only when the count is positive:
        ``"warn"`` warns while that program runs (block on the samples before leaving a
        ``warnings.catch_warnings`` block), ``"raise"`` makes it fail with a
        ``jax.errors.JaxRuntimeError`` containing the :class:`NonFiniteError` message (catch
        ``RuntimeError`` for both), and that program is not stored in the persistent cache
        (pass ``"ignore"`` inside it and check ``info.nonfinite_final`` to keep it cacheable).
        Under ``vmap`` one report counts the particles of all batch members; sharded runs
        report once. The count is of the final samples, also with
        ``return_info``/``record_every`` (``info.nonfinite_final``).
      mesh: a ``jax.sharding.Mesh``; particles are sharded along ``batch_axis`` (default: the
        mesh's first axis) for the whole run.
      x_init: optional initial particles ``(n, d)`` at ``t_max``.
      dtype: floating dtype (default ``x_init``'s, else JAX's default float).
      layout: ``"rows"`` (particles ``(n, d)``, ``method.step`` vmapped),
        ``"columns"`` (particle-minor ``(d, B)`` tiles, each tile through all steps with
        ``method.step`` and the model's batched ``score_columns``; methods with
        ``elementwise`` set, no ``record_every``/``check``) or ``"auto"`` (columns when
        allowed, ``d <= COLUMN_MAX_D`` and the model declares ``columns_native``: mixtures
        with diagonal covariances and their compositions; ``d <= FUSED_COLUMN_MAX_D`` for a
        composition of isotropic or diagonal mixtures scored in the fused form). Same samples
        either way (the noise of particle ``j`` is the same stream); only speed differs.
      tile_size: the most particles per tile of the columns layout (rounded up to a multiple
        of 8; tiles run one after the other on each device). ``None`` (default): the
        backend's policy, :func:`tile_plan` -- ``COLUMN_TILE = 16384`` on CPU (cache-sized),
        one tile per device on GPU/TPU unless state and normals exceed ``COLUMN_TILE_BYTES``
        (1 GiB). The samples do not depend on it. An error with ``layout="rows"``; unused
        when ``layout="auto"`` picks rows.
      compiler_options: XLA options for compiling the run, as ``jax.jit(...,
        compiler_options=)`` takes them (a mapping of ``DebugOptions`` names to values).
        ``None`` (default): :data:`CPU_COMPILER_OPTIONS` on CPU (512-bit vectors where the CPU
        has them; in the columns layout at ``d > 8`` also :data:`CPU_COLUMN_OPTIONS`, no
        YNNPACK fusions), none elsewhere; ``{}``: XLA's defaults. They apply when ``cj.sample`` is
        called at top level; traced by your ``jit``/``vmap``/``grad`` the run is part of
        your program and compiled with its options (JAX allows no others).
      **options: options of a method given by name (the fields of its class): ``eta`` (ddim);
        ``snr``, ``n_corrector``, ``corrector_step`` (``"snr"`` or ``"fixed"``), ``n_pilot``
        (predictor_corrector); ``mcmc_steps``, ``step_size``, ``target_accept``, ``adapt``,
        ``n_pilot`` (annealed MCMC), ``n_leapfrog`` (annealed_hmc). Not allowed next to a
        method object. Step sizes that depend on the target (SNR corrector,
        MCMC) are fixed per level BEFORE the main run from a pilot ensemble of ``n_pilot``
        particles with keys derived from ``key``, so they do not depend on ``n`` and each MCMC
        level is an exact Metropolis-Hastings kernel (see ``docs/sampling.md``).

    Returns:
      ``samples (n, d)``, or a :class:`SampleResult` when ``return_info`` or ``record_every``.

    Multi-host (TPU pods, multi-node GPU): call ``jax.distributed.initialize()`` in every
    process, build ``mesh = jax.make_mesh((jax.device_count(),), ("batch",))`` over ALL
    processes' devices and call ``cj.sample`` with the same arguments (same key; ``n`` the global
    count, divisible by ``jax.device_count()``) in every process. The result is a global array;
    each process holds its devices' particles (``x.addressable_shards``), identical to those of
    a single-host run with the same key; the pilot ensemble is replicated. ``x_init`` must then
    be a global array. Details in ``docs/sampling.md``.

    Warns:
      NonFiniteWarning: non-finite samples (``nonfinite="warn"``).
      CompositionWarning: ``model`` is a ``compose``/``guidance``/``linear_combination`` of
        ``cj.diffuse`` families with concrete numbers whose exact ``t = 0`` law does not exist
        (``cj.composed_distribution`` raises ``ValueError``, e.g. a negative weight on a
        conditional narrower than the background): the samples approximate no distribution.
        Checked once at trace time (cached per model); silent when the law has no closed form,
        when the numbers are traced, or when its exact mixture would exceed 4096 components.

    Raises:
      ValueError: bad ``shape``/``steps``/``t_min``/``grid``/``method``/``nonfinite``/
        ``layout``/``tile_size``/option values, or a model whose score has the wrong shape.
      TypeError: a ``key`` that is not a PRNG key, unknown options (or options next to a
        method object), a Metropolis method on a model without ``log_prob``.
      NonFiniteError: non-finite samples with ``nonfinite="raise"`` (eager call).

    Example:
      >>> import jax, jax.numpy as jnp, composition_jax as cj
      >>> sch = cj.VPSchedule()
      >>> p = cj.diffuse(cj.Gaussian(jnp.zeros(2), jnp.eye(2)), sch)
      >>> cj.sample(jax.random.key(0), p, sch, (4, 2), steps=10).shape
      (4, 2)
    """
    check_key(key)
    nonfinite = _check_nonfinite_mode(nonfinite)
    method = resolve_method(method, options, DRIVER_OPTIONS)
    n, d = check_shape(shape)
    steps, t_min_f = check_times(schedule, steps, t_min, grid)
    if record_every is not None:
        record_every = _check_int(record_every, "record_every")
        if record_every > steps:
            raise ValueError(f"record_every must be <= steps = {steps}, got {record_every}")
    if x_init is not None:
        x_init = jnp.asarray(x_init)
        if x_init.shape != (n, d):
            raise ValueError(f"x_init must have shape {(n, d)}, got {tuple(x_init.shape)}")
        if not jnp.issubdtype(x_init.dtype, jnp.floating):
            raise TypeError(f"x_init must be floating, got dtype {x_init.dtype}")
    if dtype is None:
        dtype = x_init.dtype if x_init is not None else jnp.result_type(float)
    dtype = jnp.dtype(dtype)
    law_model, model = model, as_model(model)
    if method.needs_log_prob and not model.has_log_prob:
        raise TypeError(
            f"method {method!r} is Metropolis-corrected and needs model.log_prob(x, t); "
            f"{type(law_model).__name__} has none"
        )
    check_model_shape(model, d, dtype)
    warn_if_no_law(law_model)
    if mesh is not None:
        if not isinstance(mesh, jax.sharding.Mesh):
            raise TypeError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
        mesh = _auto_mesh(mesh)
        batch_axis = mesh.axis_names[0] if batch_axis is None else batch_axis
        if batch_axis not in mesh.axis_names:
            raise ValueError(f"batch_axis {batch_axis!r} not in mesh axes {mesh.axis_names}")
    tile_size = _check_tile_size(tile_size, layout)
    layout = choose_layout(layout, method, model, d, record_every, bool(check))
    if layout == "columns" and tile_size is None:
        tile_size = tile_plan(_platform(mesh), d, method.num_normals, dtype)
    compiler_options = check_compiler_options(compiler_options, _platform(mesh), layout, d)
    cfg = _Config(
        layout=layout,
        tile=tile_size if layout == "columns" else 0,
        method=method,
        shape=(n, d),
        steps=steps,
        t_min=t_min_f,
        grid=grid,
        rho=float(rho),
        denoise_final=bool(denoise_final),
        record_every=record_every,
        return_info=bool(return_info or record_every is not None),
        check=bool(check),
        mesh=mesh,
        batch_axis=batch_axis,
        dtype=dtype,
        has_x_init=x_init is not None,
        nonfinite="ignore" if check else nonfinite,
        compiler_options=compiler_options,
    )
    fn = _build(cfg)
    if cfg.check:
        err, out = fn(key, model, schedule, x_init)
        err.throw()
        return out
    if cfg.nonfinite == "ignore":
        return fn(key, model, schedule, x_init)
    out, stats = fn(key, model, schedule, x_init)
    _report(cfg.nonfinite, n, steps, stats)
    return out
