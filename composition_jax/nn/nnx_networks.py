r"""Score networks in flax NNX (the API flax recommends), and their bridge to the library.

:class:`NNXMLPScoreNet`, :class:`NNXUNetScoreNet` and :class:`NNXLocalScoreNet` are the NNX
versions of :class:`~composition_jax.nn.MLPScoreNet`, :class:`~composition_jax.nn.UNetScoreNet` and
:class:`~composition_jax.nn.LocalScoreNet`: the same
architecture, the same operations in the same order, built the NNX way
(``NNXMLPScoreNet(dim=2, rngs=nnx.Rngs(0))`` creates the parameters) and called eagerly as
``net(x_in, t, cond)`` with ``x_in (B, d)``, ``t (B,)``, ``cond (B,) int32``. They expose the
attributes the library reads: ``dim``, ``num_conditions``, ``null_condition`` and ``config``
(the constructor arguments, recorded in checkpoints).

Why flat names (``cj.nn.NNXMLPScoreNet``) rather than a submodule ``cj.nn.nnx.MLPScoreNet``: the
two families live side by side in one namespace, tracebacks, reprs and checkpoint configurations
name the class alone (``NNXMLPScoreNet(dim=2, ...)`` cannot be mistaken for the linen
``MLPScoreNet(dim=2, ...)``, whose parameters are laid out differently), and ``cj.nn.nnx`` would
shadow ``flax.nnx`` in user code that does ``from composition_jax.nn import *``.

A model is a pure pytree, so an NNX module (a mutable object owning its arrays) enters the
library through ``nnx.split``: :meth:`NNXNetwork.split` returns the static half, an
:class:`NNXNetwork` (the hashable ``GraphDef`` plus ``dim`` / ``num_conditions`` /
``null_condition``), and the parameters as an ``nnx.State`` pytree.
``NNXNetwork.apply(state, x_in, t, cond)`` is ``nnx.merge(graphdef, state)(x_in, t, cond)``, so
:class:`~composition_jax.nn.ScoreNetModel` (``ScoreNetModel.from_nnx``), ``DSMTrainer``, the DSM
loss and checkpoints treat it exactly like a linen module and its parameter dict: the graphdef
is in the treedef, the state's arrays are leaves, and one compiled sampler or training step
serves every parameter value without retracing.

:func:`nnx_from_linen` and :func:`linen_from_nnx` convert parameters between the two families
(a bijection of the parameter leaves; the outputs agree bit for bit on CPU, see the tests).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, traverse_util

from .embeddings import sinusoidal_embedding
from .networks import (
    LocalScoreNet,
    MLPScoreNet,
    UNetScoreNet,
    _block_layout,
    _check_blocks,
    _check_mlp_config,
    _check_unet_config,
)

__all__ = [
    "NNXLocalScoreNet",
    "NNXMLPScoreNet",
    "NNXNetwork",
    "NNXUNetScoreNet",
    "linen_from_nnx",
    "nnx_from_linen",
]


# -- layers ---------------------------------------------------------------------------------------
class _Embed(nnx.Module):
    """Embedding table lookup ``table[c]`` in the table's dtype, as linen's ``nn.Embed``.

    (``nnx.Embed`` fixes its output dtype when it is built, to the parameter dtype, so a model
    evaluated in float64, which casts the parameters to float64, would get float32 condition
    embeddings from it.)"""

    def __init__(self, num_embeddings: int, features: int, *, rngs: nnx.Rngs):
        init = nnx.initializers.variance_scaling(1.0, "fan_in", "normal", out_axis=0)
        self.embedding = nnx.Param(init(rngs.params(), (num_embeddings, features), jnp.float32))

    def __call__(self, c):
        return jnp.take(self.embedding[...], c, axis=0)


class _CondTimeEmbedding(nnx.Module):
    """Sinusoidal time features -> Linear -> silu -> Linear, plus a learned condition embedding
    (``C + 1`` rows, the last = NULL) for a conditional network."""

    def __init__(self, features: int, num_conditions: int | None, *, rngs: nnx.Rngs):
        self.features = features
        self.time_in = nnx.Linear(features, features, rngs=rngs)
        self.time_out = nnx.Linear(features, features, rngs=rngs)
        self.cond_embed = (None if num_conditions is None
                           else _Embed(num_conditions + 1, features, rngs=rngs))

    def __call__(self, t, cond):
        emb = sinusoidal_embedding(t, self.features)
        emb = self.time_out(nnx.silu(self.time_in(emb)))
        if self.cond_embed is not None:
            emb = emb + self.cond_embed(cond)
        return emb

    def _linen_names(self, names: _LinenNames) -> Iterator[tuple[str, tuple]]:
        yield names("Dense"), ("time_in",)
        yield names("Dense"), ("time_out",)
        if self.cond_embed is not None:
            yield "cond_embed", ("cond_embed",)


class _BlockLinear(nnx.Module):
    """One dense layer per block, as linen's ``_BlockDense``: ``(B, N, i) -> (B, N, o)`` with
    kernel ``(B, i, o)`` and bias ``(B, o)``."""

    def __init__(self, num_blocks: int, in_features: int, out_features: int, *,
                 rngs: nnx.Rngs, zero: bool = False):
        init = (nnx.initializers.zeros_init() if zero
                else nnx.initializers.lecun_normal(batch_axis=(0,)))
        self.kernel = nnx.Param(init(rngs.params(), (num_blocks, in_features, out_features),
                                     jnp.float32))
        self.bias = nnx.Param(jnp.zeros((num_blocks, out_features), jnp.float32))

    def __call__(self, h):
        return jnp.einsum("bni,bio->bno", h, self.kernel[...]) + self.bias[...][:, None]


class _MLPBlock(nnx.Module):
    """``h + W_3 silu(W_1 silu(LN(h)) + W_2 silu(emb))``; with ``num_blocks``, one weight set per
    block (``h``, ``emb``: ``(B, N, hidden)``; the layer norm acts per block)."""

    def __init__(self, hidden: int, *, rngs: nnx.Rngs, num_blocks: int | None = None):
        def linear():
            if num_blocks is None:
                return nnx.Linear(hidden, hidden, rngs=rngs)
            return _BlockLinear(num_blocks, hidden, hidden, rngs=rngs)

        self.norm = nnx.LayerNorm(hidden, rngs=rngs)
        self.hidden_in = linear()
        self.emb_in = linear()
        self.hidden_out = linear()

    def __call__(self, h, emb):
        r = nnx.silu(self.norm(h))
        r = self.hidden_in(r) + self.emb_in(nnx.silu(emb))
        r = self.hidden_out(nnx.silu(r))
        return h + r


class _ResBlock(nnx.Module):
    """GroupNorm -> silu -> 3x3 conv, + projected embedding, GroupNorm -> silu -> 3x3 conv,
    plus the input (through a 1x1 conv when the channel count changes)."""

    def __init__(self, in_features: int, features: int, groups: int, emb_features: int, *,
                 rngs: nnx.Rngs):
        self.norm1 = nnx.GroupNorm(in_features, num_groups=min(groups, in_features), rngs=rngs)
        self.conv1 = nnx.Conv(in_features, features, (3, 3), rngs=rngs)
        self.emb_in = nnx.Linear(emb_features, features, rngs=rngs)
        self.norm2 = nnx.GroupNorm(features, num_groups=min(groups, features), rngs=rngs)
        self.conv2 = nnx.Conv(features, features, (3, 3), rngs=rngs)
        self.skip = (None if in_features == features
                     else nnx.Conv(in_features, features, (1, 1), rngs=rngs))

    def __call__(self, h, emb):
        r = self.conv1(nnx.silu(self.norm1(h)))
        r = r + self.emb_in(nnx.silu(emb))[:, None, None, :]
        r = self.conv2(nnx.silu(self.norm2(r)))
        if self.skip is not None:
            h = self.skip(h)
        return h + r

    def _linen_names(self, names: _LinenNames) -> Iterator[tuple[str, tuple]]:
        yield names("GroupNorm"), ("norm1",)
        yield names("Conv"), ("conv1",)
        yield names("Dense"), ("emb_in",)
        yield names("GroupNorm"), ("norm2",)
        yield names("Conv"), ("conv2",)
        if self.skip is not None:
            yield names("Conv"), ("skip",)


# -- networks -------------------------------------------------------------------------------------
class _ScoreNet(nnx.Module):
    """What the library's NNX networks share: the NULL condition index of their ``num_conditions``
    (set by each network's constructor)."""

    num_conditions: int | None

    @property
    def null_condition(self) -> int:
        """The reserved NULL (unconditional) condition index ``C`` (0 for unconditional nets)."""
        return 0 if self.num_conditions is None else self.num_conditions


class NNXMLPScoreNet(_ScoreNet):
    r"""Residual MLP for vector data with a sinusoidal time embedding (flax NNX).

    The architecture of :class:`~composition_jax.nn.MLPScoreNet`: ``h = W_in x_in + E(t, c)``;
    ``depth`` residual blocks ``h += W_3 silu(W_1 silu(LN(h)) + W_2 silu(E))``; output
    ``W_out silu(LN(h))`` with ``W_out`` initialised to zero (an untrained network predicts zero).
    ``E(t, c)`` is the sinusoidal embedding of ``t`` through a two-layer MLP plus, for a
    conditional network, a learned embedding of ``c`` (row ``C`` = NULL, Ho & Salimans 2022).

    Args:
      dim: data dimension ``d``.
      hidden: width of the hidden layers (even).
      depth: number of residual blocks.
      num_conditions: ``None`` (unconditional) or the number ``C`` of conditions; index ``C`` is
        the NULL condition.
      rngs: ``nnx.Rngs`` drawing the initial parameters (``params`` stream or default).

    Call:
      ``net(x_in (B, d), t (B,), cond (B,) int32) -> (B, d)``.

    Example:
      >>> from flax import nnx
      >>> import jax.numpy as jnp, composition_jax as cj
      >>> net = cj.nn.NNXMLPScoreNet(dim=2, hidden=16, depth=1, rngs=nnx.Rngs(0))
      >>> net(jnp.ones((3, 2)), jnp.full((3,), 0.5), jnp.zeros((3,), jnp.int32)).shape
      (3, 2)
    """

    def __init__(self, dim: int, hidden: int = 128, depth: int = 3,
                 num_conditions: int | None = None, *, rngs: nnx.Rngs):
        _check_mlp_config(dim, hidden, depth, num_conditions)
        self.dim, self.hidden, self.depth = dim, hidden, depth
        self.num_conditions = num_conditions
        self.embed = _CondTimeEmbedding(hidden, num_conditions, rngs=rngs)
        self.proj_in = nnx.Linear(dim, hidden, rngs=rngs)
        self.blocks = nnx.List([_MLPBlock(hidden, rngs=rngs) for _ in range(depth)])
        self.norm_out = nnx.LayerNorm(hidden, rngs=rngs)
        self.proj_out = nnx.Linear(hidden, dim, kernel_init=nnx.initializers.zeros_init(),
                                   rngs=rngs)

    @property
    def config(self) -> dict:
        """The constructor arguments (without ``rngs``)."""
        return {"dim": self.dim, "hidden": self.hidden, "depth": self.depth,
                "num_conditions": self.num_conditions}

    def __call__(self, x, t, cond):
        emb = self.embed(t, cond)
        h = self.proj_in(x) + emb
        for block in self.blocks:
            h = block(h, emb)
        return self.proj_out(nnx.silu(self.norm_out(h)))

    def _linen_names(self, names: _LinenNames) -> Iterator[tuple[str, tuple]]:
        # linen's MLPScoreNet creates its layers in this order (auto-names Type_k per scope)
        yield from _nested(names("_CondTimeEmbedding"), ("embed",), self.embed)
        yield names("Dense"), ("proj_in",)
        for i in range(self.depth):
            yield names("LayerNorm"), ("blocks", i, "norm")
            yield names("Dense"), ("blocks", i, "hidden_in")
            yield names("Dense"), ("blocks", i, "emb_in")
            yield names("Dense"), ("blocks", i, "hidden_out")
        yield names("LayerNorm"), ("norm_out",)
        yield names("Dense"), ("proj_out",)


class NNXLocalScoreNet(_ScoreNet):
    r"""A score network that is *local by construction* (flax NNX): its output on the pixel block
    ``M_b`` depends only on the input on ``M_b``, the time and the condition.

    The architecture of :class:`~composition_jax.nn.LocalScoreNet`: every block has its own
    residual MLP (one weight set per block, run side by side as batched ``einsum``), reads its
    ``|M_b|`` pixels (zero-padded to the largest block), adds the shared time embedding and a
    per-block condition embedding ``E[c, b]``, and writes its pixels of the output; layer norms
    act per block. The Jacobian ``d out_i / d x_j`` is exactly zero for ``i`` and ``j`` in
    different blocks, whatever the parameters.

    Args:
      dim: data dimension ``d``.
      blocks: a partition of ``range(d)`` into non-empty blocks of flat indices.
      hidden: width of each block's hidden layers (even).
      depth: residual blocks per block MLP.
      num_conditions: ``None`` or ``C`` (NULL index ``C``).
      rngs: ``nnx.Rngs`` drawing the initial parameters.

    Call:
      ``net(x_in (B, d), t (B,), cond (B,) int32) -> (B, d)``.

    Example:
      >>> from flax import nnx
      >>> import jax.numpy as jnp, composition_jax as cj
      >>> net = cj.nn.NNXLocalScoreNet(dim=4, blocks=((0, 1), (2, 3)), hidden=8, depth=1,
      ...                              rngs=nnx.Rngs(0))
      >>> net(jnp.ones((3, 4)), jnp.full((3,), 0.5), jnp.zeros((3,), jnp.int32)).shape
      (3, 4)
    """

    def __init__(self, dim: int, blocks: Sequence[Sequence[int]], hidden: int = 64,
                 depth: int = 2, num_conditions: int | None = None, *, rngs: nnx.Rngs):
        _check_mlp_config(dim, hidden, depth, num_conditions)
        self.dim, self.hidden, self.depth = dim, hidden, depth
        self.blocks = _check_blocks(dim, blocks)
        self.num_conditions = num_conditions
        nb, width = len(self.blocks), max(len(b) for b in self.blocks)
        self.embed = _CondTimeEmbedding(hidden, None, rngs=rngs)
        self.cond_embed = (None if num_conditions is None
                           else _Embed(num_conditions + 1, nb * hidden, rngs=rngs))
        self.proj_in = _BlockLinear(nb, width, hidden, rngs=rngs)
        self.layers = nnx.List([_MLPBlock(hidden, rngs=rngs, num_blocks=nb)
                                for _ in range(depth)])
        self.norm_out = nnx.LayerNorm(hidden, rngs=rngs)
        self.proj_out = _BlockLinear(nb, hidden, width, rngs=rngs, zero=True)

    @property
    def config(self) -> dict:
        """The constructor arguments (without ``rngs``)."""
        return {"dim": self.dim, "blocks": self.blocks, "hidden": self.hidden,
                "depth": self.depth, "num_conditions": self.num_conditions}

    def __call__(self, x, t, cond):
        n, nb, hid = x.shape[0], len(self.blocks), self.hidden
        gather, scatter = _block_layout(self.dim, self.blocks)
        xe = jnp.concatenate([x, jnp.zeros((n, 1), x.dtype)], axis=1)
        xb = jnp.swapaxes(xe[:, gather], 0, 1)  # (B, N, P): block-major, as linen's
        emb = self.embed(t, None)[None]  # (1, N, H)
        if self.cond_embed is not None:
            emb = emb + jnp.swapaxes(self.cond_embed(cond).reshape(n, nb, hid), 0, 1)
        emb = jnp.broadcast_to(emb, (nb, n, hid))
        h = self.proj_in(xb) + emb
        for layer in self.layers:
            h = layer(h, emb)
        out = self.proj_out(nnx.silu(self.norm_out(h)))  # (B, N, P)
        return jnp.swapaxes(out, 0, 1).reshape(n, -1)[:, scatter]

    def _linen_names(self, names: _LinenNames) -> Iterator[tuple[str, tuple]]:
        # linen's LocalScoreNet creates its layers in this order
        yield from _nested(names("_CondTimeEmbedding"), ("embed",), self.embed)
        if self.cond_embed is not None:
            yield "cond_embed", ("cond_embed",)
        yield names("_BlockDense"), ("proj_in",)
        for i in range(self.depth):
            yield names("LayerNorm"), ("layers", i, "norm")
            yield names("_BlockDense"), ("layers", i, "hidden_in")
            yield names("_BlockDense"), ("layers", i, "emb_in")
            yield names("_BlockDense"), ("layers", i, "hidden_out")
        yield names("LayerNorm"), ("norm_out",)
        yield names("_BlockDense"), ("proj_out",)


class NNXUNetScoreNet(_ScoreNet):
    r"""Small convolutional U-Net for images, on flattened vectors (flax NNX).

    The architecture of :class:`~composition_jax.nn.UNetScoreNet`: a sample is a vector of
    length ``d = height * width * channels`` (row-major ``(H, W, C)``); one residual block per
    resolution going down (stride-2 convolutions between resolutions), a middle block, one
    residual block per resolution going up (nearest upsampling, a 3x3 convolution, skip
    concatenation); the time/condition embedding is added in every block; the output
    convolution is initialised to zero. ``height`` and ``width`` must be divisible by
    ``2 ** (len(features) - 1)``.

    Args:
      height, width, channels: image shape.
      features: channels per resolution (even), e.g. ``(32, 64)``.
      num_conditions: ``None`` or ``C`` (NULL index ``C``).
      groups: GroupNorm groups (capped by the channel count; must divide it).
      rngs: ``nnx.Rngs`` drawing the initial parameters.

    Call:
      ``net(x_in (B, d), t (B,), cond (B,) int32) -> (B, d)``.
    """

    def __init__(self, height: int = 16, width: int = 16, channels: int = 1,
                 features: Sequence[int] = (32, 64), num_conditions: int | None = None,
                 groups: int = 8, *, rngs: nnx.Rngs):
        feats = _check_unet_config(height, width, channels, features, num_conditions, groups)
        self.height, self.width, self.channels = height, width, channels
        self.features, self.groups, self.num_conditions = feats, groups, num_conditions
        e = 4 * feats[0]
        self.embed = _CondTimeEmbedding(e, num_conditions, rngs=rngs)
        self.conv_in = nnx.Conv(channels, feats[0], (3, 3), rngs=rngs)
        n = len(feats)
        self.down = nnx.List([_ResBlock(f, f, groups, e, rngs=rngs) for f in feats])
        self.downsample = nnx.List([
            nnx.Conv(feats[i], feats[i + 1], (3, 3), strides=(2, 2), rngs=rngs)
            for i in range(n - 1)])
        self.mid = _ResBlock(feats[-1], feats[-1], groups, e, rngs=rngs)
        # up path, in execution order i = n-1, ..., 0: up[j] works at resolution i = n-1-j
        self.upsample = nnx.List([
            nnx.Conv(feats[i + 1], feats[i], (3, 3), rngs=rngs) for i in reversed(range(n - 1))])
        self.up = nnx.List([
            _ResBlock(2 * feats[i], feats[i], groups, e, rngs=rngs) for i in reversed(range(n))])
        self.norm_out = nnx.GroupNorm(feats[0], num_groups=min(groups, feats[0]), rngs=rngs)
        self.conv_out = nnx.Conv(feats[0], channels, (3, 3),
                                 kernel_init=nnx.initializers.zeros_init(), rngs=rngs)

    @property
    def dim(self) -> int:
        return self.height * self.width * self.channels

    @property
    def config(self) -> dict:
        """The constructor arguments (without ``rngs``)."""
        return {"height": self.height, "width": self.width, "channels": self.channels,
                "features": self.features, "num_conditions": self.num_conditions,
                "groups": self.groups}

    def __call__(self, x, t, cond):
        b, n = x.shape[0], len(self.features)
        h = x.reshape(b, self.height, self.width, self.channels)
        emb = self.embed(t, cond)
        h = self.conv_in(h)
        skips = []
        for i in range(n):
            h = self.down[i](h, emb)
            skips.append(h)
            if i < n - 1:
                h = self.downsample[i](h)
        h = self.mid(h, emb)
        for j, i in enumerate(reversed(range(n))):
            if i < n - 1:
                bb, hh, ww, cc = h.shape
                h = jax.image.resize(h, (bb, 2 * hh, 2 * ww, cc), method="nearest")
                h = self.upsample[j - 1](h)
            h = jnp.concatenate([h, skips[i]], axis=-1)
            h = self.up[j](h, emb)
        h = nnx.silu(self.norm_out(h))
        return self.conv_out(h).reshape(b, self.dim)

    def _linen_names(self, names: _LinenNames) -> Iterator[tuple[str, tuple]]:
        # linen's UNetScoreNet creates its layers in this order
        n = len(self.features)
        yield from _nested(names("_CondTimeEmbedding"), ("embed",), self.embed)
        yield names("Conv"), ("conv_in",)
        for i in range(n):
            yield from _nested(names("_ResBlock"), ("down", i), self.down[i])
            if i < n - 1:
                yield names("Conv"), ("downsample", i)
        yield from _nested(names("_ResBlock"), ("mid",), self.mid)
        for j, i in enumerate(reversed(range(n))):
            if i < n - 1:
                yield names("Conv"), ("upsample", j - 1)
            yield from _nested(names("_ResBlock"), ("up", j), self.up[j])
        yield names("GroupNorm"), ("norm_out",)
        yield names("Conv"), ("conv_out",)


# -- linen <-> nnx parameter conversion ---------------------------------------------------------
class _LinenNames:
    """linen's automatic submodule names in one scope: ``Type_k``, ``k`` counting per type in
    creation order."""

    def __init__(self):
        self.counts: dict[str, int] = {}

    def __call__(self, type_name: str) -> str:
        k = self.counts.get(type_name, 0)
        self.counts[type_name] = k + 1
        return f"{type_name}_{k}"


def _nested(scope: str, path: tuple, module: Any) -> Iterator[tuple[str, tuple]]:
    for sub, p in module._linen_names(_LinenNames()):
        yield f"{scope}/{sub}", path + p


_PAIRS = ((MLPScoreNet, NNXMLPScoreNet), (UNetScoreNet, NNXUNetScoreNet),
          (LocalScoreNet, NNXLocalScoreNet))


def _one_of(classes) -> str:
    """``"A, B or C"`` of the classes' names (the conversions' error messages)."""
    names = [c.__name__ for c in classes]
    return ", ".join(names[:-1]) + " or " + names[-1]


def _layer_map(module: Any) -> list[tuple[tuple[str, ...], tuple]]:
    """``[(linen scope path, nnx submodule path), ...]`` for every parameterised layer."""
    return [(tuple(lp.split("/")), np_) for lp, np_ in module._linen_names(_LinenNames())]


def _abstract(cls: type, config: dict) -> nnx.Module:
    """The module ``cls(**config)`` with ``jax.ShapeDtypeStruct`` parameters (no FLOPs)."""
    return nnx.eval_shape(lambda: cls(**config, rngs=nnx.Rngs(0)))


def _fmt_config(network: Any) -> str:
    body = ", ".join(f"{f.name}={getattr(network, f.name)!r}" for f in dataclasses.fields(network)
                     if f.name not in ("parent", "name"))
    return f"{type(network).__name__}({body})"


def nnx_from_linen(network: Any, params: Any) -> nnx.Module:
    """The NNX network with the architecture of the linen ``network`` and its ``params``.

    ``MLPScoreNet -> NNXMLPScoreNet``, ``UNetScoreNet -> NNXUNetScoreNet``, ``LocalScoreNet ->
    NNXLocalScoreNet`` with the same configuration; every parameter array is carried over
    unchanged (the map between linen's auto-named scopes and the NNX attributes is a bijection,
    checked leaf by leaf), so the two networks compute the same function.

    Args:
      network: a linen ``MLPScoreNet``, ``UNetScoreNet`` or ``LocalScoreNet``.
      params: its parameters ``{"params": {...}}`` (from ``init_params`` or training).

    Raises:
      TypeError: ``network`` is not one of the library's linen networks, or ``params`` is not
        a linen parameter dict.
      ValueError: ``params`` does not have this network's parameters (a missing, extra or
        mis-shaped leaf is named).
    """
    for lin, nx in _PAIRS:
        if type(network) is lin:
            break
    else:
        raise TypeError(f"network must be a linen {_one_of(lin for lin, _ in _PAIRS)}, got "
                        f"{type(network).__name__}")
    config = {f.name: getattr(network, f.name) for f in dataclasses.fields(network)
              if f.name not in ("parent", "name")}
    abstract = _abstract(nx, config)
    graphdef, state = nnx.split(abstract)
    want = {path: v for path, v in nnx.to_flat_state(state)}
    src = params.get("params") if isinstance(params, dict) else None
    if not isinstance(src, dict):
        raise TypeError("params must be a linen parameter dict {'params': {...}}")
    flat_src = traverse_util.flatten_dict(src)
    layers = _layer_map(abstract)
    # layers first (a missing or extra layer says more than a shape), then leaves and shapes
    have = {k[:-1] for k in flat_src}
    for lpath, _ in layers:
        if lpath not in have:
            raise ValueError(f"params has no layer {'/'.join(lpath)}")
    extra = sorted("/".join(k) for k in have - {lp for lp, _ in layers})
    if extra:
        raise ValueError(f"params layer {extra[0]} is not a layer of {_fmt_config(network)}")
    new = {}
    for lpath, npath in layers:
        leaves = {k[-1]: k for k in flat_src if k[:-1] == lpath}
        for name, k in leaves.items():
            target = npath + (name,)
            if target not in want:
                raise ValueError(f"params leaf {'/'.join(k)} has no NNX counterpart")
            value = jnp.asarray(flat_src[k])
            spec = want[target].get_value()
            if value.shape != spec.shape:
                raise ValueError(f"params leaf {'/'.join(k)}: shape {value.shape}, the network "
                                 f"needs {spec.shape}")
            new[target] = value
    missing = sorted(str(p) for p in set(want) - set(new))
    if missing:  # pragma: no cover - the layer map covers every layer
        raise ValueError(f"no linen parameter for the NNX leaf {missing[0]}")
    nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(new))
    return nnx.merge(graphdef, state)


def linen_from_nnx(module: Any) -> tuple[Any, dict]:
    """``(linen network, params)`` computing the same function as the NNX ``module``: the
    inverse of :func:`nnx_from_linen` (``NNXMLPScoreNet -> MLPScoreNet``, ``NNXUNetScoreNet ->
    UNetScoreNet``, ``NNXLocalScoreNet -> LocalScoreNet``), for code and caches that use linen.

    Raises:
      TypeError: ``module`` is not one of the library's NNX networks.
    """
    for lin, nx in _PAIRS:
        if type(module) is nx:
            break
    else:
        raise TypeError(f"module must be an {_one_of(nx for _, nx in _PAIRS)}, got "
                        f"{type(module).__name__}")
    flat = {path: v.get_value() for path, v in nnx.to_flat_state(nnx.state(module, nnx.Param))}
    out = {}
    for lpath, npath in _layer_map(module):
        for path, value in flat.items():
            if path[:-1] == npath:
                out[lpath + (path[-1],)] = value
    if len(out) != len(flat):  # pragma: no cover - the layer map covers every layer
        raise ValueError("the NNX module has parameters outside the linen layout")
    return lin(**module.config), {"params": traverse_util.unflatten_dict(out)}


# -- the bridge to the library: a static network half and a state pytree -------------------------
def _simple(v: Any) -> bool:
    if v is None or isinstance(v, (bool, int, float, str)):
        return True
    return isinstance(v, tuple) and all(_simple(x) for x in v)


def _module_config(module: Any) -> dict:
    config = getattr(module, "config", None)
    if isinstance(config, dict):
        return dict(config)
    # another NNX module: its public plain-valued attributes (ints, floats, strings, tuples)
    return {k: v for k, v in sorted(vars(module).items())
            if not k.startswith("_") and _simple(v)}


@dataclasses.dataclass(frozen=True)
class NNXNetwork:
    r"""The static half of an NNX score network: its ``GraphDef`` and what the library reads.

    ``NNXNetwork.split(module)`` returns ``(network, state)`` with ``state`` the module's
    ``nnx.Param`` state (a pytree of arrays). ``network.apply(state, x_in, t, cond)`` is
    ``nnx.merge(graphdef, state)(x_in, t, cond)``: the linen-style functional call that
    :class:`~composition_jax.nn.ScoreNetModel`, the DSM loss and the trainer use. Hashable and
    compared by value (``GraphDef`` equality: same module types, same static attributes, same
    structure), so it is static under ``jax.jit`` and two modules of the same architecture share
    their compiled programs.

    Attributes:
      graphdef: ``nnx.GraphDef`` of the module.
      dim, num_conditions, null_condition: read from the module.
      type_name: the module's class name.
      config: ``((name, value), ...)``: the module's ``config`` (constructor arguments) for the
        library's networks; for another module its public int/float/str/tuple attributes.
    """

    graphdef: Any
    dim: int
    num_conditions: int | None
    null_condition: int
    type_name: str
    config: tuple

    @classmethod
    def split(cls, module: Any) -> tuple[NNXNetwork, nnx.State]:
        """``(network, params)`` of an ``nnx.Module`` with ``dim``, ``num_conditions`` and
        ``null_condition`` attributes.

        Raises:
          TypeError: not an ``nnx.Module``, a missing attribute, or state other than
            ``nnx.Param`` (batch statistics, RNG streams: a score model must be a pure
            function of its parameters), or unhashable static attributes.
        """
        if not isinstance(module, nnx.Module):
            raise TypeError(f"module must be a flax.nnx.Module, got {type(module).__name__}")
        for attr in ("dim", "num_conditions", "null_condition"):
            if not hasattr(module, attr):
                raise TypeError(f"module must be a score network (with .{attr}), got "
                                f"{type(module).__name__}")
        graphdef, params, rest = nnx.split(module, nnx.Param, ...)
        other = [p for p, _ in nnx.to_flat_state(rest)]
        if other:
            raise TypeError(
                f"module has state other than nnx.Param (at {'/'.join(map(str, other[0]))}); "
                f"a score model must be a pure function of its parameters")
        config = tuple(_module_config(module).items())
        net = cls(graphdef, int(module.dim), module.num_conditions,
                  int(module.null_condition), type(module).__name__, config)
        try:
            hash(net)
        except TypeError as e:
            raise TypeError(f"module {type(module).__name__} has an unhashable static "
                            f"attribute ({e}); jit needs a hashable graph definition") from None
        return net, params

    def merge(self, params: Any) -> nnx.Module:
        """The module with parameters ``params`` (``nnx.merge``)."""
        return nnx.merge(self.graphdef, params)

    def apply(self, params: Any, x: jax.Array, t: jax.Array, cond: jax.Array) -> jax.Array:
        """``module(x, t, cond)`` for the module with parameters ``params``."""
        return nnx.merge(self.graphdef, params)(x, t, cond)

    def describe(self) -> dict:
        """JSON-ready configuration ``{"type": name, field: value, ...}`` (tuples as lists)."""
        def js(v):
            return [js(x) for x in v] if isinstance(v, tuple) else v
        return {"type": self.type_name, **{k: js(v) for k, v in self.config}}

    def __repr__(self) -> str:
        body = ", ".join(f"{k}={v!r}" for k, v in self.config)
        return f"NNXNetwork({self.type_name}({body}))"

