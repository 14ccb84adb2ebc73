r"""Synthetic "blob scenes": a CPU-scale analogue of the paper's location-conditioned CLEVR data.

An image is ``H x W`` pixels, one channel, flattened row-major to a vector of length
``d = H * W`` (the library's ``(d,)`` contract). There are ``L`` fixed *locations*
``c_1..c_L`` (pixel coordinates). A scene is a subset ``P`` of locations ("present objects"):

``x = sum_{l in P} a_l g(c_l + j_l) + s0 eps``,  ``g(c)[p] = exp(-|p - c|^2 / (2 r^2))``,

with amplitudes ``a_l ~ U[amp_lo, amp_hi]``, sub-pixel jitter ``j_l ~ U[-jitter, jitter]^2``,
background noise ``eps ~ N(0, I)`` and blob radius ``r``. The laws used by the experiments
(Bradley et al., 2025, Sec. 5.2, Figure 3):

* ``single_at(i)``: ``P = {i}`` (configuration A/B conditionals ``p_i``),
* ``empty``: ``P = {}`` (the empty-scene background ``p_b`` of configuration A),
* ``single_random``: ``P = {i}``, ``i`` uniform (the unconditional ``p_u`` of configuration B),
* ``cluttered_at(i)``: ``i`` present, every other location independently present with
  probability ``q = clutter_prob`` (configuration C conditionals),
* ``clutter``: every location independently present with probability ``q`` (configuration C
  background).

Why independent clutter and not the paper's uniform object counts (C: object at ``i`` plus 0-4
others, background 1-5 objects, ``L = 9``): a count limit is a *global* constraint. At the level of
presence sets the exact composition ``p_b prod_{i in S} (p_i / p_b)`` of count-limited laws is
supported only on sets with at most the limit, so with ``L = 6`` and limits of 3 objects no
composition of ``k >= 4`` conditionals can be realised even with exact scores (the count limit
breaks Factorized Conditionals). Independent clutter is exactly FC at the presence level
(``p_i = delta_i x Bernoulli(q)^{others}``, ``p_b = Bernoulli(q)^L``; the image analogue of the
paper's eq. 18 "cluttered background"), so the composition of any ``S`` has all of ``S`` present
and the other locations still ``Bernoulli(q)``.

**Detector** (deterministic): the matched-filter response at location ``l``,
``r_l(x) = <x, g(c_l)> / <g(c_l), g(c_l)>``, is ``1`` for a nominal unit blob at ``c_l``, ``0`` for
the empty scene (plus noise of standard deviation ``s0 / |g(c_l)|``), and
``exp(-|c_l - c_m|^2 / (4 r^2))`` for a unit blob at another location ``c_m`` (cross-talk). An
object is *detected* at ``l`` when ``r_l > threshold``; the default threshold is midway between the
empty response (0) and the mean blob response ``(amp_lo + amp_hi) / 2``.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from ..distributions import GaussianMixture

__all__ = [
    "BlobConfig",
    "PRESENCE_KINDS",
    "cross_talk",
    "detect",
    "detector_responses",
    "location_blocks",
    "mixture_law",
    "presence",
    "render",
    "scenes",
    "templates",
]

PRESENCE_KINDS = ("single_at", "empty", "single_random", "cluttered_at", "clutter")


@dataclasses.dataclass(frozen=True)
class BlobConfig:
    """Geometry and noise of the blob scenes.

    Attributes:
      height, width: image size in pixels.
      locations: ``L`` pixel coordinates ``(row, col)`` of the object locations.
      radius: blob radius ``r`` (pixels).
      amp_lo, amp_hi: amplitude range.
      jitter: maximal sub-pixel displacement of a blob centre along each axis.
      noise_std: background noise ``s0``.
      clutter_prob: configuration C: probability ``q`` that a location carries clutter.
    """

    height: int = 8
    width: int = 8
    locations: tuple = ((1.5, 1.5), (1.5, 4.0), (1.5, 6.5), (5.5, 1.5), (5.5, 4.0), (5.5, 6.5))
    radius: float = 0.7
    amp_lo: float = 0.8
    amp_hi: float = 1.2
    jitter: float = 0.25
    noise_std: float = 0.05
    clutter_prob: float = 0.3

    def __post_init__(self):
        for name in ("height", "width"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        locs = np.asarray(self.locations, dtype=float)
        if locs.ndim != 2 or locs.shape[1] != 2 or locs.shape[0] < 1:
            raise ValueError(f"locations must have shape (L, 2) with L >= 1, got {locs.shape}")
        object.__setattr__(self, "locations", tuple(tuple(float(v) for v in r) for r in locs))
        if not (self.radius > 0 and self.noise_std >= 0 and 0 < self.amp_lo <= self.amp_hi
                and self.jitter >= 0):
            raise ValueError(
                "need radius > 0, noise_std >= 0, 0 < amp_lo <= amp_hi, jitter >= 0; got "
                f"radius={self.radius}, noise_std={self.noise_std}, amp=({self.amp_lo}, "
                f"{self.amp_hi}), jitter={self.jitter}")
        if not (0.0 <= self.clutter_prob <= 1.0):
            raise ValueError(f"clutter_prob must lie in [0, 1], got {self.clutter_prob}")

    @property
    def num_locations(self) -> int:
        return len(self.locations)

    @property
    def dim(self) -> int:
        return self.height * self.width

    @property
    def threshold(self) -> float:
        """Detection threshold: midway between the empty (0) and the mean blob response."""
        return 0.25 * (self.amp_lo + self.amp_hi)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _grid(cfg: BlobConfig, dtype):
    yy, xx = jnp.meshgrid(jnp.arange(cfg.height, dtype=dtype), jnp.arange(cfg.width, dtype=dtype),
                          indexing="ij")
    return yy.reshape(-1), xx.reshape(-1)


def templates(cfg: BlobConfig, dtype=None) -> jax.Array:
    """Nominal unit blobs ``g(c_l)`` at the ``L`` locations, shape ``(L, d)``."""
    dtype = jnp.result_type(float) if dtype is None else dtype
    yy, xx = _grid(cfg, dtype)
    c = jnp.asarray(cfg.locations, dtype)
    r2 = (yy[None, :] - c[:, :1]) ** 2 + (xx[None, :] - c[:, 1:]) ** 2
    return jnp.exp(-r2 / jnp.asarray(2.0 * cfg.radius**2, dtype))


def cross_talk(cfg: BlobConfig) -> np.ndarray:
    """Continuum cross-talk ``exp(-|c_l - c_m|^2 / (4 r^2))`` between locations, ``(L, L)``.

    This is the matched-filter response at ``l`` to a unit blob at ``m`` when the pixel grid is
    replaced by the plane (the sums become Gaussian integrals); on the pixel grid the response is
    ``<g_l, g_m> / <g_l, g_l>`` (see :func:`detector_responses`)."""
    c = np.asarray(cfg.locations, float)
    d2 = ((c[:, None, :] - c[None, :, :]) ** 2).sum(-1)
    return np.exp(-d2 / (4.0 * cfg.radius**2))


def presence(key: jax.Array, cfg: BlobConfig, n: int, kind: str, location: int | None = None
             ) -> jax.Array:
    """Draw ``n`` presence masks ``(n, L)`` (bool) of the given law (see module docstring).

    ``single_random`` ranks i.i.d. uniforms (a uniform random location); clutter is i.i.d.
    ``Bernoulli(clutter_prob)`` per location.
    """
    if kind not in PRESENCE_KINDS:
        raise ValueError(f"kind must be one of {PRESENCE_KINDS}, got {kind!r}")
    L = cfg.num_locations
    needs_loc = kind in ("single_at", "cluttered_at")
    if needs_loc and (location is None or not (0 <= int(location) < L)):
        raise ValueError(f"kind {kind!r} needs location in [0, {L}), got {location!r}")
    if not needs_loc and location is not None:
        raise ValueError(f"kind {kind!r} takes no location, got {location!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    ku, km = jax.random.split(key)
    u = jax.random.uniform(ku, (n, L))
    ranks = jnp.argsort(jnp.argsort(u, axis=1), axis=1)  # a uniform random permutation per row
    if kind == "empty":
        return jnp.zeros((n, L), bool)
    if kind == "single_random":
        return ranks == 0
    clutter = jax.random.uniform(km, (n, L)) < cfg.clutter_prob
    if kind == "clutter":
        return clutter
    own = jnp.arange(L) == int(location)
    if kind == "single_at":
        return jnp.broadcast_to(own, (n, L))
    return own[None, :] | clutter


def render(key: jax.Array, cfg: BlobConfig, present: jax.Array, dtype=None) -> jax.Array:
    """Images ``(n, d)`` with blobs at the present locations (``present (n, L)`` bool)."""
    dtype = jnp.result_type(float) if dtype is None else dtype
    present = jnp.asarray(present)
    L = cfg.num_locations
    if present.ndim != 2 or present.shape[1] != L:
        raise ValueError(f"present must have shape (n, {L}), got {tuple(present.shape)}")
    n = present.shape[0]
    ka, kj, ke = jax.random.split(key, 3)
    amp = jax.random.uniform(ka, (n, L), dtype, cfg.amp_lo, cfg.amp_hi)
    jit = jax.random.uniform(kj, (n, L, 2), dtype, -cfg.jitter, cfg.jitter)
    c = jnp.asarray(cfg.locations, dtype)[None] + jit  # (n, L, 2)
    yy, xx = _grid(cfg, dtype)
    r2 = (yy[None, None, :] - c[..., :1]) ** 2 + (xx[None, None, :] - c[..., 1:]) ** 2
    blobs = jnp.exp(-r2 / jnp.asarray(2.0 * cfg.radius**2, dtype))  # (n, L, d)
    w = jnp.where(present, amp, jnp.zeros((), dtype))
    x = jnp.einsum("nl,nld->nd", w, blobs)
    return x + jnp.asarray(cfg.noise_std, dtype) * jax.random.normal(ke, x.shape, dtype)


def scenes(key: jax.Array, cfg: BlobConfig, n: int, kind: str, location: int | None = None,
           dtype=None) -> tuple[jax.Array, jax.Array]:
    """``(images (n, d), present (n, L))`` of the given law."""
    kp, kr = jax.random.split(key)
    p = presence(kp, cfg, n, kind, location)
    return render(kr, cfg, p, dtype), p


def detector_responses(x: jax.Array, cfg: BlobConfig) -> jax.Array:
    """Matched-filter responses ``r_l(x) = <x, g_l> / <g_l, g_l>``, shape ``(n, L)``."""
    x = jnp.asarray(x)
    if x.ndim != 2 or x.shape[1] != cfg.dim:
        raise ValueError(f"x must have shape (n, {cfg.dim}), got {tuple(x.shape)}")
    g = templates(cfg, x.dtype)
    return (x @ g.T) / jnp.sum(g * g, axis=1)[None, :]


def detect(x: jax.Array, cfg: BlobConfig, threshold: float | None = None) -> jax.Array:
    """Detected objects ``(n, L)`` bool: response above ``threshold`` (default
    :attr:`BlobConfig.threshold`)."""
    thr = cfg.threshold if threshold is None else float(threshold)
    if not math.isfinite(thr):
        raise ValueError(f"threshold must be finite, got {threshold!r}")
    return detector_responses(x, cfg) > thr


def location_blocks(cfg: BlobConfig, support_tol: float = 1e-2) -> tuple[tuple, tuple]:
    """The pixel partition of Factorized Conditionals for the blob scenes (Def. 5.2).

    Block ``l`` is the set of pixels ``p`` whose nearest centre is ``c_l`` (ties go to the lower
    index: overlapping supports are split between their locations, never shared) and where the
    nominal template is not negligible, ``g(c_l)[p] >= support_tol`` (default 1 % of the peak).
    Pixels outside every support form the background block ``M_b`` (empty in the default 8 x 8
    geometry, whose cells are all within 2.2 pixels of a centre).

    Returns:
      ``(blocks, background)``: ``L`` tuples of flat pixel indices (row-major) and one tuple,
      possibly empty; together a partition of ``range(H * W)``.

    Raises:
      ValueError: ``support_tol`` outside ``(0, 1)``, or a location with an empty block
        (centres closer than a pixel, or outside the image).
    """
    if not (0.0 < float(support_tol) < 1.0):
        raise ValueError(f"support_tol must lie in (0, 1), got {support_tol!r}")
    yy, xx = np.meshgrid(np.arange(cfg.height), np.arange(cfg.width), indexing="ij")
    c = np.asarray(cfg.locations, float)
    d2 = (yy.reshape(1, -1) - c[:, :1]) ** 2 + (xx.reshape(1, -1) - c[:, 1:]) ** 2  # (L, d)
    near = np.argmin(d2, axis=0)  # the first minimum: ties to the lower index
    inside = np.exp(-d2[near, np.arange(cfg.dim)] / (2.0 * cfg.radius**2)) >= support_tol
    blocks = tuple(tuple(int(p) for p in np.flatnonzero((near == l) & inside))
                   for l in range(cfg.num_locations))
    empty = [l for l, b in enumerate(blocks) if not b]
    if empty:
        raise ValueError(f"locations {empty} have no pixel of their own (centres {c[empty]} "
                         f"closer than a pixel to another centre, or outside the "
                         f"{cfg.height}x{cfg.width} image)")
    return blocks, tuple(int(p) for p in np.flatnonzero(~inside))


def mixture_law(cfg: BlobConfig, kind: str, location: int | None = None, *,
                amp_nodes: int = 5, jitter_nodes: int = 5, truncate: bool = False,
                support_tol: float = 1e-2, dtype=None) -> GaussianMixture:
    r"""Midpoint-rule quadrature of a single-object (or empty) blob law as a Gaussian mixture.

    The law of ``x = a g(c_l + j) + s0 eps`` (module docstring) is a continuous mixture over the
    amplitude ``a ~ U[amp_lo, amp_hi]`` and the jitter ``j ~ U[-jitter, jitter]^2``; replacing
    each uniform by ``amp_nodes`` (resp. ``jitter_nodes`` per axis) equal-weight cell midpoints
    gives the isotropic Gaussian mixture
    ``sum_{a, j} w N(a g(c_l + j), s0^2 I)``, ``w = 1 / (amp_nodes jitter_nodes^2)``, whose noised
    score ``cj.diffuse(law, schedule).score`` is exact at every ``t``. The quadrature converges to
    the blob law as the node counts grow (the midpoint rule is second order in the spacing).

    Args:
      cfg: the scene geometry.
      kind: ``"single_at"`` (needs ``location``), ``"single_random"`` (the uniform mixture over
        locations) or ``"empty"`` (``N(0, s0^2 I)``). The clutter laws have ``2^L`` presence
        sets and are not offered.
      location: the object's location for ``"single_at"``.
      amp_nodes, jitter_nodes: quadrature nodes (``jitter_nodes = 1`` when ``jitter = 0``).
      truncate: zero every template outside its own block of :func:`location_blocks`, which
        makes ``(empty, single_at(0..L-1))`` exactly Factorized Conditionals.
      support_tol: passed to :func:`location_blocks` when ``truncate``.
      dtype: float dtype (default: JAX's default float).

    Raises:
      ValueError: an unknown or unsupported ``kind``, a bad ``location``, ``s0 = 0`` (no
        density), node counts below 1.
    """
    dtype = jnp.result_type(float) if dtype is None else dtype
    if kind not in ("single_at", "single_random", "empty"):
        raise ValueError(f"kind must be 'single_at', 'single_random' or 'empty', got {kind!r}")
    L, d = cfg.num_locations, cfg.dim
    if kind == "single_at":
        if location is None or isinstance(location, bool) or not 0 <= int(location) < L:
            raise ValueError(f"kind 'single_at' needs location in [0, {L}), got {location!r}")
    elif location is not None:
        raise ValueError(f"kind {kind!r} takes no location, got {location!r}")
    if cfg.noise_std <= 0:
        raise ValueError("mixture_law needs noise_std > 0 (a law with a density)")
    for name, v in (("amp_nodes", amp_nodes), ("jitter_nodes", jitter_nodes)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    var = cfg.noise_std**2
    if kind == "empty":
        return GaussianMixture(jnp.ones((1,), dtype), jnp.zeros((1, d), dtype),
                               jnp.asarray(var * np.eye(d)[None], dtype), covariance="iso")
    locs = [int(location)] if kind == "single_at" else list(range(L))
    amps = cfg.amp_lo + (np.arange(amp_nodes) + 0.5) / amp_nodes * (cfg.amp_hi - cfg.amp_lo)
    nj = 1 if cfg.jitter == 0 else jitter_nodes
    js = -cfg.jitter + (np.arange(nj) + 0.5) / nj * 2.0 * cfg.jitter
    jy, jx = (v.reshape(-1) for v in np.meshgrid(js, js, indexing="ij"))
    yy, xx = (v.reshape(-1) for v in np.meshgrid(np.arange(cfg.height), np.arange(cfg.width),
                                                   indexing="ij"))
    mask = np.ones((L, d))
    if truncate:
        blocks, _ = location_blocks(cfg, support_tol)
        mask = np.zeros((L, d))
        for l, b in enumerate(blocks):
            mask[l, list(b)] = 1.0
    means = []
    for l in locs:
        cy, cx = cfg.locations[l]
        r2 = (yy[None] - cy - jy[:, None]) ** 2 + (xx[None] - cx - jx[:, None]) ** 2
        g = np.exp(-r2 / (2.0 * cfg.radius**2)) * mask[l][None]  # (nj^2, d)
        means.append((amps[:, None, None] * g[None]).reshape(-1, d))
    means = np.concatenate(means)
    K = means.shape[0]
    return GaussianMixture(jnp.full((K,), 1.0 / K, dtype), jnp.asarray(means, dtype),
                           jnp.asarray(np.broadcast_to(var * np.eye(d), (K, d, d)), dtype),
                           covariance="iso")
