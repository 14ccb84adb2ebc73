"""optax denoising-score-matching training, checkpoints, and score accuracy against exact scores.

``DSMTrainer`` (jitted fused steps, EMA, progress bar, exact resumption; trains a flax NNX
module's parameter state or a linen module's parameters; its checkpoints record and check the
schedule, parameterization, network, training settings and data),
``save_checkpoint`` / ``CheckpointWriter`` (asynchronous) / ``load_checkpoint`` /
``checkpoint_steps`` (orbax checkpoint directories
with an integrity record on top: SHA-256 over the arrays and the metadata, every leaf's path,
shape and dtype checked; :class:`CheckpointError`, a ``ValueError``, names the problem),
``fisher_divergence`` (per-time score error against ``cj.diffuse(dist, schedule)``).
"""

from .checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    CheckpointWriter,
    checkpoint_steps,
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
    "CheckpointWriter",
    "DSMTrainer",
    "FisherReport",
    "TrainState",
    "checkpoint_steps",
    "dsm_loss_per_example",
    "fisher_divergence",
    "load_checkpoint",
    "read_checkpoint_header",
    "sample_times",
    "save_checkpoint",
    "throughput",
    "tree_fingerprint",
]
