"""Reverse-diffusion and Metropolis-corrected samplers: one-step kernels (``kernels``, ``mcmc``),
time grids (``grids``) and the shared jitted driver ``sample`` (``driver``)."""

from . import mcmc as _mcmc  # noqa: F401  (registers the Metropolis kernels)
from .driver import (
    CompositionWarning,
    NonFiniteError,
    NonFiniteWarning,
    SampleInfo,
    SampleResult,
    as_model,
    particle_mesh,
    sample,
    trace_count,
)
from .grids import GRIDS, time_grid
from .kernels import KERNELS, Kernel, SamplerState, register_kernel
from .mcmc import MCMCInfo, MCMCState

__all__ = [
    "GRIDS",
    "KERNELS",
    "CompositionWarning",
    "Kernel",
    "MCMCInfo",
    "MCMCState",
    "NonFiniteError",
    "NonFiniteWarning",
    "SampleInfo",
    "SampleResult",
    "SamplerState",
    "as_model",
    "particle_mesh",
    "register_kernel",
    "sample",
    "time_grid",
    "trace_count",
]
