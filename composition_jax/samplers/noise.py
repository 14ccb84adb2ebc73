r"""Counter-based noise for the samplers: each particle's numbers depend only on ``(key, i)``.

``normals(key, n, shape)`` returns ``(n, *shape)`` standard normals whose row ``j`` is a pure
function of ``(key, j)``: the same for any ``n > j``, under ``jit``, and however the rows are
sharded over devices (the rows are computed from global indices, never from a sequential
stream). The hash is Threefry-2x32 with 20 rounds, the one ``jax.random`` uses, on the counter
``(row j, column c)`` with a key pair derived from ``key``; it is written here as unrolled
elementwise uint32 arithmetic (bit-identical to ``jax.random``'s primitive, tested) because that
primitive lowers to a rolled loop on XLA:CPU that materializes the random words in memory,
whereas the unrolled hash fuses with the inverse-CDF and with the sampler update that consumes
the noise. (Using both output words for two normals halves the hashing but needs a
concatenation, which breaks that fusion: measured 2--4x slower in the sampler, so each normal
takes one hash, as in ``jax.random``.)

* float32 (and narrower): 23-bit uniforms ``u = (b >> 9 + 1/2) 2^-22 - 1`` in ``(-1, 1)``,
  symmetric, never ``+-1``; ``z = sqrt(2) erfinv(u)`` (tails truncated at 5.3 standard
  deviations, like ``jax.random.normal``). The inverse CDF is Giles' single-precision
  approximation of ``erfinv`` (M. Giles, "Approximating the erfinv function", GPU Computing
  Gems, 2011) evaluated on ``w = -log((1 - u)(1 + u))``, where both factors are exact for these
  ``u`` and the log is a polynomial on the float's mantissa (:func:`_log_unit`). Over all 2^23
  possible inputs it is within 5 float32 ulps of ``sqrt(2) erfinv(u)`` in float64, exactly odd,
  and non-decreasing (tested exhaustively); ``jax.lax.erf_inv`` forms ``log1p(-u * u)``, whose
  rounded ``u * u`` costs up to 91 ulps in the tails, and ran 1.4x slower here.
* float64: 64-bit words, 52-bit uniforms, ``jax.lax.erf_inv`` (relative error up to ~1e-10 in
  the far tails, |z| > 5, from the same ``log1p(-u * u)``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "draw_normals", "draw_uniforms", "key_pair", "normals", "normals_columns", "pilot_init",
    "pilot_keys", "random_words", "threefry2x32", "uniforms",
]


def key_pair(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Two uint32 words of key material from any JAX key (typed or raw, any PRNG impl)."""
    kd = jax.random.bits(key, (2,), jnp.uint32)
    return kd[0], kd[1]


_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def threefry2x32(k1: jax.Array, k2: jax.Array, x1: jax.Array, x2: jax.Array):
    """Threefry-2x32 with 20 rounds (Salmon et al. 2011; the hash behind ``jax.random``),
    written as unrolled elementwise uint32 arithmetic so that XLA fuses it with its consumers
    (the ``jax.random`` primitive lowers to a rolled loop on CPU). Equal to
    ``jax.extend.random.threefry2x32_p`` bit for bit (tested)."""
    ks = (k1, k2, k1 ^ k2 ^ np.uint32(0x1BD11BDA))
    x1 = x1 + ks[0]
    x2 = x2 + ks[1]
    for g in range(5):
        for r in _ROTATIONS[g % 2]:
            x1 = x1 + x2
            x2 = (x2 << np.uint32(r)) | (x2 >> np.uint32(32 - r))
            x2 = x2 ^ x1
        x1 = x1 + ks[(g + 1) % 3]
        x2 = x2 + ks[(g + 2) % 3] + np.uint32(g + 1)
    return x1, x2


def random_words(key: jax.Array, n: int, width: int) -> tuple[jax.Array, jax.Array]:
    """Both Threefry output words for counters ``(row j, column c)``: two ``(n, width)`` uint32.

    Row ``j`` of the result depends only on ``(key, j)``."""
    k1, k2 = key_pair(key)
    rows = jax.lax.broadcasted_iota(jnp.uint32, (n, width), 0)
    cols = jax.lax.broadcasted_iota(jnp.uint32, (n, width), 1)
    return threefry2x32(k1, k2, rows, cols)


def _float_dtype(dtype) -> np.dtype:
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"dtype must be floating, got {dtype}")
    return dtype


def _combine(o1, o2, width):
    """One random word of ``width`` 32 or 64 bits per hash: the two output words xor-ed, or
    concatenated for 64 bits, as in ``jax.random.bits``."""
    if width == 64:
        return o1.astype(jnp.uint64) << np.uint64(32) | o2.astype(jnp.uint64)
    return o1 ^ o2


def _bits(key, n, length, width):
    """``(n, length)`` random words of ``width`` bits, ONE hash per element."""
    return _combine(*random_words(key, n, length), width)


def uniforms(key: jax.Array, n: int, shape: tuple = (), dtype=None) -> jax.Array:
    """``(n, *shape)`` uniforms in ``[0, 1)``; row ``j`` depends only on ``(key, j)``."""
    dtype = _float_dtype(dtype if dtype is not None else jnp.result_type(float))
    length = math.prod(shape)
    if dtype == jnp.float64:
        b = _bits(key, n, length, 64) >> np.uint64(11)
        u = b.astype(jnp.float64) * (2.0**-53)
    else:
        b = _bits(key, n, length, 32) >> np.uint32(9)
        u = (b.astype(jnp.float32) * np.float32(2.0**-23)).astype(dtype)
    return u.reshape((n, *shape))


def _horner(coefficients, w):
    """``sum_i c_i w^(n - i)`` for float32 ``w`` (coefficients highest degree first)."""
    p = jnp.full_like(w, np.float32(coefficients[0]))
    for c in coefficients[1:]:
        p = p * w + np.float32(c)
    return p


# Cephes logf's coefficients (S. Moshier): log(1 + x) = x - x^2/2 + x^3 P(x), |x| <= sqrt(2)-1
_LOG_P = (7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1,
          1.4249322787e-1, -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1,
          3.3333331174e-1)
# Giles' single-precision erfinv: a polynomial in w - 2.5 for w < 5, in sqrt(w) - 3 beyond
_ERFINV_CENTRAL = (2.81022636e-08, 3.43273939e-07, -3.5233877e-06, -4.39150654e-06,
                   0.00021858087, -0.00125372503, -0.00417768164, 0.246640727, 1.50140941)
_ERFINV_TAIL = (-0.000200214257, 0.000100950558, 0.00134934322, -0.00367342844,
                0.00573950773, -0.0076224613, 0.00943887047, 1.00167406, 2.83297682)


def _log_unit(y):
    """Natural log of float32 ``y`` in ``[2^-126, 1]`` (positive, normal; no inf or NaN
    handling): the exponent from the bits, the mantissa reduced to ``[sqrt(1/2), sqrt(2))``
    and Cephes' polynomial, with ``ln 2`` split in two for the exponent's term. Elementwise
    arithmetic only, so it fuses with the hash and the update (``jnp.log`` here costs about as
    much again as the whole polynomial)."""
    bits = jax.lax.bitcast_convert_type(y, jnp.int32)
    mantissa = jax.lax.bitcast_convert_type((bits & 0x007FFFFF) | 0x3F800000, jnp.float32)
    high = mantissa > np.float32(np.sqrt(2.0))
    m = jnp.where(high, mantissa * np.float32(0.5), mantissa) - np.float32(1.0)
    e = ((bits >> 23) - 127 + high.astype(jnp.int32)).astype(jnp.float32)
    m2 = m * m
    r = m * m2 * _horner(_LOG_P, m) + e * np.float32(-2.12194440e-4) - np.float32(0.5) * m2
    return m + r + e * np.float32(0.693359375)


@jax.jit
def _erfinv32(u):
    """``erfinv(u)`` for the float32 uniforms of :func:`_to_normals` (``|u| <= 1 - 2^-23``):
    Giles' approximation on ``w = -log((1 - u)(1 + u))``, both factors exact, one rounding in
    their product (module docstring for the measured accuracy).

    Jitted so that an eager call is one XLA program, like a fused one: XLA:CPU contracts a
    multiply and the add it feeds into one fused multiply-add inside a program, and op-by-op
    evaluation would round those separately (1 ulp off under ``jit`` otherwise)."""
    w = -_log_unit((np.float32(1.0) - u) * (np.float32(1.0) + u))
    central = _horner(_ERFINV_CENTRAL, w - np.float32(2.5))
    tail = _horner(_ERFINV_TAIL, jnp.sqrt(w) - np.float32(3.0))
    return jnp.where(w < np.float32(5.0), central, tail) * u


def _to_normals(b, dtype):
    """Random words (uint32, or uint64 for float64) -> standard normals by the inverse CDF."""
    if dtype == jnp.float64:
        u = ((b >> np.uint64(12)).astype(jnp.float64) + 0.5) * (2.0**-51) - 1.0  # 52 bits
        return np.sqrt(2.0) * jax.lax.erf_inv(u)
    u = ((b >> np.uint32(9)).astype(jnp.float32) + np.float32(0.5)) * np.float32(2.0**-22)
    u = u - np.float32(1.0)  # 23 bits, symmetric in (-1, 1), exact
    return (np.float32(np.sqrt(2.0)) * _erfinv32(u)).astype(dtype)


def normals(key: jax.Array, n: int, shape: tuple = (), dtype=None) -> jax.Array:
    """``(n, *shape)`` standard normals; row ``j`` depends only on ``(key, j)`` (module doc)."""
    dtype = _float_dtype(dtype if dtype is not None else jnp.result_type(float))
    length = math.prod(shape)
    b = _bits(key, n, length, 64 if dtype == jnp.float64 else 32)
    return _to_normals(b, dtype).reshape((n, *shape))


def normals_columns(kp: jax.Array, offset: jax.Array, n: int, shape: tuple = (), dtype=None
                    ) -> jax.Array:
    """The same numbers as ``normals(key, total, shape)[offset:offset + n]`` laid out with the
    particle axis LAST: ``(*shape, n)``, for ``kp = jnp.stack(key_pair(key))``.

    Used by the samplers' particle-minor ("columns") layout, where a tile of ``n`` particles
    starting at global index ``offset`` is generated without the others."""
    dtype = _float_dtype(dtype if dtype is not None else jnp.result_type(float))
    length = math.prod(shape)
    rows = jnp.asarray(offset, jnp.uint32) + jax.lax.broadcasted_iota(jnp.uint32, (length, n), 1)
    cols = jax.lax.broadcasted_iota(jnp.uint32, (length, n), 0)
    b = _combine(*threefry2x32(kp[0], kp[1], rows, cols), 64 if dtype == jnp.float64 else 32)
    return _to_normals(b, dtype).reshape((*shape, n))


# ------------------------------------------------------------------------- the driver's draws
def draw_normals(key, i, n, m, d, dtype):
    """Standard normals ``(n, m, d)`` of step ``i`` from ``fold_in(key, i)``: particle ``j``'s
    numbers depend only on ``(key, i, j)``, for any ``n``, under ``jit`` and sharded."""
    return normals(jax.random.fold_in(key, i), n, (m, d), dtype)


def draw_uniforms(key, i, n, m, dtype):
    """Uniforms ``(n, m)`` in ``[0, 1)`` of step ``i`` (same construction as
    :func:`draw_normals`)."""
    return uniforms(jax.random.fold_in(key, i), n, (m,), dtype)


_PILOT_TAG = 0x70696C6F  # "pilo"


def pilot_keys(key):
    """``(k_init, k_normal, k_uniform)`` of a method's pilot ensemble (step sizes tuned before
    the main run): derived from the main key by ``fold_in`` with a fixed tag, so they are
    independent of the main particles' streams (the driver splits the main key itself) and of
    the batch size."""
    return jax.random.split(jax.random.fold_in(key, _PILOT_TAG), 3)


def pilot_init(schedule, key, n_pilot, d, dtype):
    """Pilot particles ``(n_pilot, d)`` from the prior ``N(0, prior_std^2 I)`` at ``t_max``."""
    return jnp.asarray(schedule.prior_std, dtype) * draw_normals(key, 0, n_pilot, 1, d, dtype)[:, 0]
