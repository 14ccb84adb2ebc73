"""Reverse-diffusion and Metropolis-corrected samplers: typed sampler methods (``methods``,
with the Metropolis math in ``mcmc``), counter-based noise (``noise``), time grids (``grids``)
and the shared jitted driver ``sample`` (``driver``)."""

from .driver import (
    CompositionWarning,
    NonFiniteError,
    NonFiniteWarning,
    SampleInfo,
    SampleResult,
    particle_mesh,
    sample,
)
from .grids import GRIDS, time_grid
from .mcmc import MCMCInfo, MCMCState
from .methods import (
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
    SamplerState,
    register_method,
)

__all__ = [
    "DDIM",
    "DDPM",
    "GRIDS",
    "METHODS",
    "AnnealedHMC",
    "AnnealedMALA",
    "CompositionWarning",
    "EulerMaruyama",
    "MCMCInfo",
    "MCMCState",
    "NonFiniteError",
    "NonFiniteWarning",
    "ODEEuler",
    "ODEHeun",
    "PredictorCorrector",
    "SampleInfo",
    "SampleResult",
    "SamplerMethod",
    "SamplerState",
    "particle_mesh",
    "register_method",
    "sample",
    "time_grid",
]

from .smc import SMCResult, smc_sample  # noqa: E402  (sequential Monte Carlo)
from .likelihood import LikelihoodInfo, log_likelihood  # noqa: E402  (PF-ODE likelihoods)

__all__ += ["SMCResult", "smc_sample", "LikelihoodInfo", "log_likelihood"]
