"""Flax score networks and the :class:`ScoreNetModel` wrapper that makes them models.

``MLPScoreNet`` (vectors) and ``UNetScoreNet`` (images as flat vectors) are raw approximators;
``ScoreNetModel(network, params, schedule, parameterization)`` has ``.score(x, t)`` and
``.denoise(x, t)`` on one sample, like ``cj.diffuse(dist, schedule)``.
"""

from .embeddings import SinusoidalEmbedding
from .model import (
    PARAMETERIZATIONS,
    ScoreNetModel,
    init_params,
    input_scale,
    output_to_eps,
    param_count,
)
from .networks import MLPScoreNet, UNetScoreNet

__all__ = [
    "PARAMETERIZATIONS",
    "MLPScoreNet",
    "ScoreNetModel",
    "SinusoidalEmbedding",
    "UNetScoreNet",
    "init_params",
    "input_scale",
    "output_to_eps",
    "param_count",
]
