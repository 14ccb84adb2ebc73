"""Learned-model experiments: length generalization on synthetic blob scenes and composition of
learned vector models against the exact composition (Bradley et al., 2025, Sec. 5.2)."""

from . import blobs
from .length_generalization import LengthGenConfig, run_length_generalization

__all__ = ["LengthGenConfig", "blobs", "run_length_generalization"]


def run_learned_experiments(quick: bool = True, out_dir=None, *, concurrent: bool = True
                            ) -> list[dict]:
    """Run the learned-model experiments and return scenario-like records
    ``{"name", "title", "expected", "observed", "metrics", "reasons"}`` (for
    ``composition-jax reproduce``): the length-generalization records, then the learned-vector
    ones. Trained parameters are cached under ``out_dir/cache`` when ``out_dir`` is given, else
    in :func:`composition_jax.experiments._common.cache_dir`.

    ``concurrent=True`` (the default) runs the two experiments side by side, the learned-vector
    one in a second thread: each is a chain of tracing, single-threaded XLA compilations and
    short programs, so one alone leaves a core idle much of the time (quick mode on 2 cores,
    empty caches, measured 2026-12-02: 252 s instead of 325 s one after the other). Every key
    is fixed, so the records are the same either way (all 1772 numeric fields of the quick
    records compared equal). The second thread is a daemon: an interrupt of the main thread
    (Ctrl-C) ends the run without waiting for it."""
    import pathlib

    from .._threads import beside
    from .learned_vector import VectorConfig, run_learned_vector

    mode = "quick" if quick else "full"
    cache = "default" if out_dir is None else pathlib.Path(out_dir) / "cache"

    def vector():
        return run_learned_vector(VectorConfig.for_mode(mode), cache=cache)["records"]

    def length():
        return list(run_length_generalization(LengthGenConfig.for_mode(mode),
                                              cache=cache)["records"])

    if not concurrent:
        return length() + vector()
    join = beside(vector, "learned-vector")
    recs = length()
    return recs + join()


__all__ += ["run_learned_experiments"]
