"""Clean (t = 0) laws and their exact noised families (the oracles)."""

from .base import Distribution
from .diffuse import Diffused, diffuse
from .empirical import Empirical
from .factor_mixture import FactorMixture
from .gaussian import Gaussian, GaussianMixture
from .product import Product, normalize_blocks
from .pushforward import LinearPushforward

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
]
