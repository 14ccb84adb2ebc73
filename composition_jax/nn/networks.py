r"""Score networks (flax ``linen``) acting on batches of flat vectors.

Every network here is a *raw function approximator* with the call signature

    ``net.apply(params, x_in, t, cond) -> out``,  ``x_in (B, d)``, ``t (B,)``, ``cond (B,) int32``

and the attributes ``dim`` (``d``), ``num_conditions`` (``None`` for an unconditional network) and
``null_condition``. The *meaning* of ``out`` (``eps``, ``score`` or ``x0``) and the input scaling
``x_in = x / sqrt(alpha^2 + sigma^2)`` are applied by :class:`composition_jax.nn.ScoreNetModel`,
which turns ``(network, params, schedule)`` into a model with ``.score(x, t)`` / ``.denoise(x, t)``.

These are the flax ``linen`` networks, supported alongside their flax NNX versions
(:mod:`composition_jax.nn.nnx_networks`: ``NNXMLPScoreNet``, ``NNXUNetScoreNet``, the same
architecture and operations, recommended for new code; ``nnx_from_linen`` / ``linen_from_nnx``
convert parameters). A ``linen`` module is a frozen, hashable dataclass holding only the
architecture and its parameters are a plain dict pytree, so the module goes into the treedef
(static) and the parameters are jit arguments; an NNX module is split into the same two halves
(``nnx.split``: a static ``GraphDef`` and a parameter state) by ``ScoreNetModel.from_nnx``.

Conditioning: a network with ``num_conditions = C`` has an embedding table with ``C + 1`` rows;
row ``C`` is the reserved NULL condition (``null_condition``), trained by condition dropout, so one
network is also the unconditional model and serves classifier-free guidance
(Ho & Salimans, 2022; Bradley et al., 2025, Sec. 6 use location-conditioned models composed over a
background).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from .embeddings import SinusoidalEmbedding

__all__ = ["LocalScoreNet", "MLPScoreNet", "UNetScoreNet"]


class _CondTimeEmbedding(nn.Module):
    """Time embedding (sinusoidal -> MLP) plus an optional learned condition embedding."""

    features: int
    num_conditions: int | None

    @nn.compact
    def __call__(self, t, cond):
        emb = SinusoidalEmbedding(self.features)(t)
        emb = nn.Dense(self.features)(emb)
        emb = nn.silu(emb)
        emb = nn.Dense(self.features)(emb)
        if self.num_conditions is not None:
            table = nn.Embed(self.num_conditions + 1, self.features, name="cond_embed")
            emb = emb + table(cond)
        return emb


def _check_num_conditions(num_conditions):
    if num_conditions is not None and (
        isinstance(num_conditions, bool) or not isinstance(num_conditions, int) or num_conditions < 1
    ):
        raise ValueError(f"num_conditions must be None or a positive int, got {num_conditions!r}")


def _check_mlp_config(dim, hidden, depth, num_conditions) -> None:
    """Validate an MLP score network's configuration (shared by the linen and nnx versions)."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    if not isinstance(hidden, int) or hidden < 2 or hidden % 2:
        raise ValueError(f"hidden must be an even int >= 2, got {hidden!r}")
    if not isinstance(depth, int) or depth < 0:
        raise ValueError(f"depth must be a non-negative int, got {depth!r}")
    _check_num_conditions(num_conditions)


def _check_unet_config(height, width, channels, features, num_conditions, groups) -> tuple:
    """Validate a U-Net score network's configuration; returns ``features`` as a tuple."""
    for name, v in (("height", height), ("width", width), ("channels", channels),
                    ("groups", groups)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    feats = tuple(features)
    if len(feats) < 1 or any(not isinstance(f, int) or f < 1 or f % 2 for f in feats):
        raise ValueError(f"features must be a non-empty sequence of even ints, got {feats!r}")
    f = 2 ** (len(feats) - 1)
    if height % f or width % f:
        raise ValueError(
            f"height and width must be divisible by 2**(len(features)-1) = {f}, "
            f"got ({height}, {width})"
        )
    _check_num_conditions(num_conditions)
    return feats


class MLPScoreNet(nn.Module):
    r"""Residual MLP for vector data with a sinusoidal time embedding.

    ``h = W_in x_in + E(t, c)``; ``depth`` residual blocks ``h += W_2 silu(W_1 silu(LN(h)) + E)``;
    output ``W_out silu(LN(h))`` with ``W_out`` initialised to zero (an untrained network predicts
    zero, i.e. ``eps = 0`` / ``score = 0`` / ``x0 = 0`` depending on the parameterization).

    Attributes:
      dim: data dimension ``d``.
      hidden: width of the hidden layers.
      depth: number of residual blocks.
      num_conditions: ``None`` (unconditional) or the number ``C`` of conditions; index ``C`` is
        the NULL condition.
    """

    dim: int
    hidden: int = 128
    depth: int = 3
    num_conditions: int | None = None

    def __post_init__(self):
        _check_mlp_config(self.dim, self.hidden, self.depth, self.num_conditions)
        super().__post_init__()

    @property
    def null_condition(self) -> int:
        """The reserved NULL (unconditional) condition index ``C`` (0 for unconditional nets)."""
        return 0 if self.num_conditions is None else self.num_conditions

    @nn.compact
    def __call__(self, x, t, cond):
        emb = _CondTimeEmbedding(self.hidden, self.num_conditions)(t, cond)
        h = nn.Dense(self.hidden)(x) + emb
        for _ in range(self.depth):
            r = nn.silu(nn.LayerNorm()(h))
            r = nn.Dense(self.hidden)(r) + nn.Dense(self.hidden)(nn.silu(emb))
            r = nn.Dense(self.hidden)(nn.silu(r))
            h = h + r
        h = nn.silu(nn.LayerNorm()(h))
        return nn.Dense(self.dim, kernel_init=nn.initializers.zeros)(h)


class _ResBlock(nn.Module):
    features: int
    groups: int

    @nn.compact
    def __call__(self, h, emb):
        r = nn.silu(nn.GroupNorm(num_groups=min(self.groups, h.shape[-1]))(h))
        r = nn.Conv(self.features, (3, 3))(r)
        r = r + nn.Dense(self.features)(nn.silu(emb))[:, None, None, :]
        r = nn.silu(nn.GroupNorm(num_groups=min(self.groups, self.features))(r))
        r = nn.Conv(self.features, (3, 3))(r)
        if h.shape[-1] != self.features:
            h = nn.Conv(self.features, (1, 1))(h)
        return h + r


class UNetScoreNet(nn.Module):
    r"""Small convolutional U-Net for images, on flattened vectors.

    A sample is a vector of length ``d = height * width * channels`` (row-major ``(H, W, C)``), so
    the network fits the library's ``(d,)`` contract. Architecture: one residual block per
    resolution going down (stride-2 convolutions between resolutions), a middle block, and one
    residual block per resolution going up (nearest upsampling + skip concatenation); time and
    condition embeddings are added in every block. ``height`` and ``width`` must be divisible by
    ``2 ** (len(features) - 1)``. Output convolution initialised to zero.

    Attributes:
      height, width, channels: image shape.
      features: channels per resolution, e.g. ``(32, 64)`` for two resolutions.
      num_conditions: ``None`` or ``C`` (NULL index ``C``), as for :class:`MLPScoreNet`.
      groups: GroupNorm groups (capped by the channel count).
    """

    height: int = 16
    width: int = 16
    channels: int = 1
    features: Sequence[int] = (32, 64)
    num_conditions: int | None = None
    groups: int = 8

    def __post_init__(self):
        feats = _check_unet_config(self.height, self.width, self.channels, self.features,
                                   self.num_conditions, self.groups)
        object.__setattr__(self, "features", feats)
        super().__post_init__()

    @property
    def dim(self) -> int:
        return self.height * self.width * self.channels

    @property
    def null_condition(self) -> int:
        return 0 if self.num_conditions is None else self.num_conditions

    @nn.compact
    def __call__(self, x, t, cond):
        b = x.shape[0]
        h = x.reshape(b, self.height, self.width, self.channels)
        emb = _CondTimeEmbedding(4 * self.features[0], self.num_conditions)(t, cond)
        h = nn.Conv(self.features[0], (3, 3))(h)
        skips = []
        for i, f in enumerate(self.features):
            h = _ResBlock(f, self.groups)(h, emb)
            skips.append(h)
            if i < len(self.features) - 1:
                h = nn.Conv(self.features[i + 1], (3, 3), strides=(2, 2))(h)
        h = _ResBlock(self.features[-1], self.groups)(h, emb)
        for i in reversed(range(len(self.features))):
            if i < len(self.features) - 1:
                bb, hh, ww, cc = h.shape
                h = jax.image.resize(h, (bb, 2 * hh, 2 * ww, cc), method="nearest")
                h = nn.Conv(self.features[i], (3, 3))(h)
            h = jnp.concatenate([h, skips[i]], axis=-1)
            h = _ResBlock(self.features[i], self.groups)(h, emb)
        h = nn.silu(nn.GroupNorm(num_groups=min(self.groups, h.shape[-1]))(h))
        h = nn.Conv(self.channels, (3, 3), kernel_init=nn.initializers.zeros)(h)
        return h.reshape(b, self.dim)


def _check_blocks(dim, blocks) -> tuple:
    """Validate a partition of ``range(dim)`` into non-empty blocks; returns a tuple of tuples."""
    try:
        bl = tuple(tuple(int(p) for p in b) for b in blocks)
    except TypeError as e:
        raise TypeError(f"blocks must be a sequence of sequences of pixel indices, got {blocks!r}"
                        ) from e
    if not bl or any(not b for b in bl):
        raise ValueError(f"blocks must be non-empty sequences of indices, got sizes "
                         f"{[len(b) for b in bl]}")
    flat = sorted(p for b in bl for p in b)
    if flat != list(range(dim)):
        seen = [p for b in bl for p in b]
        dup = sorted({p for p in seen if seen.count(p) > 1})
        miss = sorted(set(range(dim)) - set(seen))
        out = sorted(p for p in set(seen) if not 0 <= p < dim)
        raise ValueError(f"blocks must partition range(dim = {dim}): repeated {dup[:8]}, "
                         f"missing {miss[:8]}, out of range {out[:8]}")
    return bl


def _block_layout(dim: int, blocks: tuple) -> tuple[np.ndarray, np.ndarray]:
    """``(gather (B, P), scatter (d,))`` of a block-local network: block pixel indices padded
    with ``d`` (a zero column), and each pixel's position in the flattened ``(B * P)`` block
    output (shared by :class:`LocalScoreNet` and its NNX twin)."""
    nb, width = len(blocks), max(len(b) for b in blocks)
    gather = np.full((nb, width), dim, np.int32)
    scatter = np.empty(dim, np.int32)
    for b, pix in enumerate(blocks):
        gather[b, : len(pix)] = pix
        scatter[list(pix)] = b * width + np.arange(len(pix))
    return gather, scatter


class _BlockDense(nn.Module):
    """One dense layer per block: ``(B, N, i) -> (B, N, o)`` with kernel ``(B, i, o)``. Block-major:
    the batch dimension of the matmul leads in both operands and in the result, so XLA runs one
    batched matmul with no transposes (with the particle-major ``(N, B, i)`` form, XLA:CPU
    transposed around every layer: a two-block network of width 128 took 1.9x the time forward
    and 1.5x for the gradient)."""

    features: int
    kernel_init: object = nn.initializers.lecun_normal(batch_axis=(0,))

    @nn.compact
    def __call__(self, h):
        nb, fin = h.shape[0], h.shape[-1]
        w = self.param("kernel", self.kernel_init, (nb, fin, self.features), h.dtype)
        b = self.param("bias", nn.initializers.zeros, (nb, self.features), h.dtype)
        return jnp.einsum("bni,bio->bno", h, w) + b[:, None]


class LocalScoreNet(nn.Module):
    r"""A score network that is *local by construction*: its output on the pixel block ``M_b``
    depends only on the input on ``M_b``, the time and the condition (the local conditional scores
    of Bradley 2025, arXiv 2509.16447, whose Experiment 3 enforces them architecturally).

    Every block has its own residual MLP (the :class:`MLPScoreNet` block structure, one weight
    set per block, run side by side as batched ``einsum``): block ``b`` reads its ``|M_b|`` pixels
    (zero-padded to the largest block), adds the shared time embedding and a per-block condition
    embedding (``E[c, b]``: condition ``c`` may mean something different on each block), and
    writes its pixels of the output. Layer norms act per block. So the Jacobian
    ``d out_i / d x_j`` is exactly zero (no rounding) for ``i`` and ``j`` in different blocks,
    whatever the parameters, and a composition of such models (over any background of the same
    kind) is block-local too (:func:`composition_jax.verify.score_locality` measures 0).
    It cannot represent a law that couples the blocks (an object at one uniformly random
    location); such a model must come from an unconstrained network.

    Attributes:
      dim: data dimension ``d``.
      blocks: a partition of ``range(d)`` into non-empty blocks of flat indices.
      hidden: width of each block's hidden layers.
      depth: residual blocks per block MLP.
      num_conditions: ``None`` or ``C`` (NULL index ``C``), as for :class:`MLPScoreNet`.
    """

    dim: int
    blocks: tuple = ()
    hidden: int = 64
    depth: int = 2
    num_conditions: int | None = None

    def __post_init__(self):
        _check_mlp_config(self.dim, self.hidden, self.depth, self.num_conditions)
        object.__setattr__(self, "blocks", _check_blocks(self.dim, self.blocks))
        super().__post_init__()

    @property
    def null_condition(self) -> int:
        return 0 if self.num_conditions is None else self.num_conditions

    @nn.compact
    def __call__(self, x, t, cond):
        n, nb, hid = x.shape[0], len(self.blocks), self.hidden
        gather, scatter = _block_layout(self.dim, self.blocks)
        xe = jnp.concatenate([x, jnp.zeros((n, 1), x.dtype)], axis=1)
        xb = jnp.swapaxes(xe[:, gather], 0, 1)  # (B, N, P): block-major (see _BlockDense)
        emb = _CondTimeEmbedding(hid, None)(t, None)[None]  # (1, N, H)
        if self.num_conditions is not None:
            table = nn.Embed(self.num_conditions + 1, nb * hid, name="cond_embed")
            emb = emb + jnp.swapaxes(table(cond).reshape(n, nb, hid), 0, 1)
        emb = jnp.broadcast_to(emb, (nb, n, hid))
        h = _BlockDense(hid)(xb) + emb
        for _ in range(self.depth):
            r = nn.silu(nn.LayerNorm()(h))
            r = _BlockDense(hid)(r) + _BlockDense(hid)(nn.silu(emb))
            r = _BlockDense(hid)(nn.silu(r))
            h = h + r
        h = nn.silu(nn.LayerNorm()(h))
        out = _BlockDense(gather.shape[1], kernel_init=nn.initializers.zeros)(h)  # (B, N, P)
        return jnp.swapaxes(out, 0, 1).reshape(n, -1)[:, scatter]
