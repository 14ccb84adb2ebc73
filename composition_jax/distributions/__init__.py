"""Clean (t = 0) laws and their exact noised families (the oracles)."""

from .base import Distribution
from .diffuse import Diffused, diffuse
from .empirical import Empirical
from .factor_mixture import FactorMixture
from .gaussian import Gaussian, GaussianMixture
from .product import Product, normalize_blocks
from .pushforward import LinearPushforward
from .nonlinear import NonlinearPushforward, affine_coupling_map

__all__ = [
    "Diffused",
    "Distribution",
    "Empirical",
    "FactorMixture",
    "Gaussian",
    "GaussianMixture",
    "LinearPushforward",
    "Product",
    "diffuse",
    "normalize_blocks",
    "NonlinearPushforward",
    "affine_coupling_map",
]
