"""composition_jax: compose diffusion models by adding scores, with exact oracles.

Layers (data flows one way): schedules -> distributions -> compose -> samplers -> verify.
See ``docs/architecture.md`` and Bradley et al., *Mechanisms of Projective Composition of
Diffusion Models* (ICML 2025).
"""

from .distributions import (
    Diffused,
    Distribution,
    Empirical,
    Gaussian,
    GaussianMixture,
    LinearPushforward,
    Product,
    diffuse,
)
from .schedules import CosineVPSchedule, Schedule, VESchedule, VPSchedule
from .schedules import RectifiedFlowSchedule
from .samplers import SampleInfo, SampleResult, particle_mesh, sample, time_grid
from .samplers import CompositionWarning, NonFiniteError, NonFiniteWarning
from .samplers.smc import SMCResult, smc_sample
from .samplers.likelihood import LikelihoodInfo, log_likelihood
from .samplers import (
    DDIM,
    DDPM,
    METHODS,
    AnnealedHMC,
    AnnealedMALA,
    EulerMaruyama,
    ODEEuler,
    ODEHeun,
    PredictorCorrector,
    SamplerMethod,
    register_method,
)
from .models import CapabilityError, FunctionModel, Model, as_model
from .compose import (
    Composition,
    LinearCombination,
    compose,
    composed_distribution,
    guidance,
    linear_combination,
)
from . import verify
from .distributions import FactorMixture
from .mixture_of_models import MixtureOfModels
from .velocity import VelocityModel, convert_prediction, from_velocity, to_velocity
from .samplers.methods import DPMSolver2M, DPMSolver2S
from .distributions.nonlinear import NonlinearPushforward, affine_coupling_map

__version__ = "0.1.0"


def __getattr__(name):  # lazy: flax/optax add ~0.4 s to import; load nn/training on first use
    if name in ("nn", "training"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "sample",
    "particle_mesh",
    "SampleInfo",
    "SampleResult",
    "time_grid",
    "NonFiniteWarning",
    "NonFiniteError",
    "CompositionWarning",
    "SamplerMethod",
    "EulerMaruyama",
    "ODEEuler",
    "ODEHeun",
    "DDPM",
    "DDIM",
    "PredictorCorrector",
    "AnnealedMALA",
    "AnnealedHMC",
    "DPMSolver2M",
    "DPMSolver2S",
    "METHODS",
    "register_method",
    "nn",
    "training",
    "CosineVPSchedule",
    "RectifiedFlowSchedule",
    "VelocityModel",
    "convert_prediction",
    "from_velocity",
    "to_velocity",
    "Schedule",
    "VESchedule",
    "VPSchedule",
    "Diffused",
    "Distribution",
    "Empirical",
    "Gaussian",
    "GaussianMixture",
    "LinearPushforward",
    "Product",
    "diffuse",
    "Composition",
    "FunctionModel",
    "LinearCombination",
    "Model",
    "CapabilityError",
    "as_model",
    "compose",
    "composed_distribution",
    "guidance",
    "linear_combination",
    "verify",
    "FactorMixture",
    "MixtureOfModels",
    "SMCResult",
    "smc_sample",
    "LikelihoodInfo",
    "log_likelihood",
    "NonlinearPushforward",
    "affine_coupling_map",
]
