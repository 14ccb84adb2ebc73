"""optax denoising-score-matching training, checkpoints, and score accuracy against exact scores.

``DSMTrainer`` (jitted fused steps, EMA, progress bar, exact resumption; its checkpoints record
and check the schedule, parameterization, network and training settings), ``save_checkpoint`` /
``load_checkpoint`` (atomic; one SHA-256 over header and payload; every leaf's path, shape and
dtype checked; :class:`CheckpointError`, a ``ValueError``, names the first problem),
``fisher_divergence`` (per-time score error against ``cj.diffuse(dist, schedule)``).
"""

from .checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    load_checkpoint,
    read_checkpoint_header,
    save_checkpoint,
    tree_fingerprint,
)
from .dsm import TIME_SAMPLINGS, WEIGHTINGS, dsm_loss_per_example, sample_times
from .metrics import FisherReport, fisher_divergence
from .trainer import DSMTrainer, TrainState, throughput

__all__ = [
    "FORMAT_VERSION",
    "TIME_SAMPLINGS",
    "WEIGHTINGS",
    "CheckpointError",
    "DSMTrainer",
    "FisherReport",
    "TrainState",
    "dsm_loss_per_example",
    "fisher_divergence",
    "load_checkpoint",
    "read_checkpoint_header",
    "sample_times",
    "save_checkpoint",
    "throughput",
    "tree_fingerprint",
]
