"""Learned-model experiments: length generalization on synthetic blob scenes and composition of
learned vector models against the exact composition (Bradley et al., 2025, Sec. 5.2)."""

from . import blobs
from .length_generalization import LengthGenConfig, run_length_generalization

__all__ = ["LengthGenConfig", "blobs", "run_length_generalization"]


def run_learned_experiments(quick: bool = True, out_dir=None) -> list[dict]:
    """Run the learned-model experiments and return scenario-like records
    ``{"name", "title", "expected", "observed", "metrics", "reasons"}`` (for
    ``composition-jax reproduce``). Trained parameters are cached under ``out_dir/cache`` when
    ``out_dir`` is given, else in :func:`composition_jax.experiments._common.cache_dir`."""
    import pathlib

    from .learned_vector import VectorConfig, run_learned_vector

    mode = "quick" if quick else "full"
    cache = "default" if out_dir is None else pathlib.Path(out_dir) / "cache"
    recs = list(run_length_generalization(LengthGenConfig.for_mode(mode), cache=cache)["records"])
    recs += run_learned_vector(VectorConfig.for_mode(mode), cache=cache)["records"]
    return recs


__all__ += ["run_learned_experiments"]
