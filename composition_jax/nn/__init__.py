"""Flax score networks and the :class:`ScoreNetModel` wrapper that makes them models.

``NNXMLPScoreNet`` (vectors), ``NNXUNetScoreNet`` (images as flat vectors) and
``NNXLocalScoreNet`` (block-local by construction) are flax NNX modules, the recommended form;
``MLPScoreNet``, ``UNetScoreNet`` and ``LocalScoreNet`` are the same networks in flax linen
(supported; ``nnx_from_linen`` / ``linen_from_nnx`` convert parameters between the two). They
are raw approximators; ``ScoreNetModel.from_nnx(module, schedule, parameterization)`` (or
``ScoreNetModel(network, params, schedule, parameterization)`` for linen) has ``.score(x, t)``
and ``.denoise(x, t)`` on one sample, like ``cj.diffuse(dist, schedule)``.
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
from .networks import LocalScoreNet, MLPScoreNet, UNetScoreNet
from .nnx_networks import (
    NNXLocalScoreNet,
    NNXMLPScoreNet,
    NNXNetwork,
    NNXUNetScoreNet,
    linen_from_nnx,
    nnx_from_linen,
)

__all__ = [
    "PARAMETERIZATIONS",
    "LocalScoreNet",
    "MLPScoreNet",
    "NNXLocalScoreNet",
    "NNXMLPScoreNet",
    "NNXNetwork",
    "NNXUNetScoreNet",
    "ScoreNetModel",
    "SinusoidalEmbedding",
    "UNetScoreNet",
    "init_params",
    "input_scale",
    "linen_from_nnx",
    "nnx_from_linen",
    "output_to_eps",
    "param_count",
]
