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
  deviations, like ``jax.random.normal``).
* float64: 64-bit words, 52-bit uniforms.
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


def _to_normals(b, dtype):
    """Random words (uint32, or uint64 for float64) -> standard normals by the inverse CDF."""
    if dtype == jnp.float64:
        u = ((b >> np.uint64(12)).astype(jnp.float64) + 0.5) * (2.0**-51) - 1.0  # 52 bits
        return np.sqrt(2.0) * jax.lax.erf_inv(u)
    u = ((b >> np.uint32(9)).astype(jnp.float32) + np.float32(0.5)) * np.float32(2.0**-22)
    u = u - np.float32(1.0)  # 23 bits, symmetric in (-1, 1)
    return (np.float32(np.sqrt(2.0)) * jax.lax.erf_inv(u)).astype(dtype)


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
