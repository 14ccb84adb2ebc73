r"""Time embeddings for score networks."""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp

__all__ = ["SinusoidalEmbedding", "sinusoidal_embedding"]


def sinusoidal_embedding(t, features: int, scale: float = 1000.0, max_period: float = 10000.0):
    r"""``[sin(w_k s t), cos(w_k s t)]_{k < features/2}``, ``w_k = max_period^{-k/(features/2)}``,
    ``s = scale``: the fixed time features of :class:`SinusoidalEmbedding`, as a function (the
    flax ``linen`` and ``nnx`` networks both call it, so their time features are the same ops).

    Args:
      t: times, shape ``(B,)``.

    Returns:
      ``(B, features)``, in ``t``'s dtype.
    """
    half = features // 2
    k = jnp.arange(half, dtype=t.dtype)
    freqs = jnp.exp(k * (-math.log(max_period) / half))
    args = (scale * t)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


class SinusoidalEmbedding(nn.Module):
    r"""Fixed (untrained) sinusoidal / Fourier features of a time ``t in [0, 1]``.

    ``emb(t) = [sin(w_k s t), cos(w_k s t)]_{k < features/2}`` with log-spaced frequencies
    ``w_k = max_period^{-k / (features/2)}`` and ``s = scale`` (Vaswani et al., 2017; the DDPM time
    embedding with ``t`` rescaled to ``[0, scale]``).

    Args (call):
      t: times, shape ``(B,)``.

    Returns:
      ``(B, features)``, in ``t``'s dtype.
    """

    features: int
    scale: float = 1000.0
    max_period: float = 10000.0

    @nn.compact
    def __call__(self, t):
        return sinusoidal_embedding(t, self.features, self.scale, self.max_period)
