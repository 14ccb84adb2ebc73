import jax
import jax.numpy as jnp
import pytest

import composition_jax as cj


def test_gaussian_score_is_grad_log_prob(key):
    g = cj.Gaussian(jnp.array([1.0, -1.0]), jnp.array([[2.0, 0.5], [0.5, 1.0]]))
    p = cj.diffuse(g, cj.VPSchedule())
    x = jax.random.normal(key, (2,))
    for t in (1e-4, 0.3, 1.0):
        assert jnp.allclose(p.score(x, t), jax.grad(p.log_prob)(x, t), rtol=1e-4, atol=1e-5)


@pytest.mark.x64
def test_x64_gaussian_score_is_grad_log_prob(key):
    g = cj.Gaussian(jnp.array([1.0, -1.0]), jnp.array([[2.0, 0.5], [0.5, 1.0]]))
    assert g.mean.dtype == jnp.float64
    p = cj.diffuse(g, cj.VPSchedule())
    x = jax.random.normal(key, (2,), jnp.float64)
    for t in (1e-4, 0.3, 1.0):
        assert jnp.allclose(p.score(x, t), jax.grad(p.log_prob)(x, t), rtol=1e-10, atol=1e-12)


def test_compilation_cache_sweep(tmp_path):
    """The sweep of the persistent compilation cache (composition_jax._compile_cache): entries
    that do not decompress go (JAX would warn on every read and never rewrite them), then the
    oldest past the size cap."""
    import os

    from jax._src.compilation_cache import compress_executable

    from composition_jax._compile_cache import sweep

    good = [tmp_path / f"jit_f{i}-{i:064x}-cache" for i in range(3)]
    for i, p in enumerate(good):
        p.write_bytes(compress_executable(bytes([i]) * 1000))
        os.utime(p, (1e9 + i, 1e9 + i))  # good[0] is the oldest
    truncated = tmp_path / f"jit_g-{7:064x}-cache"
    truncated.write_bytes(compress_executable(b"x" * 1000)[:-4])
    empty = tmp_path / f"jit_h-{8:064x}-cache"
    empty.write_bytes(b"")
    other = tmp_path / "not-an-entry.txt"
    other.write_bytes(b"garbage")
    assert sweep(str(tmp_path)) == 2
    assert all(p.exists() for p in good) and other.exists()
    assert not truncated.exists() and not empty.exists()
    size = good[0].stat().st_size
    assert sweep(str(tmp_path), max_bytes=2 * size) == 1
    assert not good[0].exists() and good[1].exists() and good[2].exists()


def test_cache_is_verified_only_after_a_session_cut_short(tmp_path):
    """A session marks the cache folder while it runs; the next session reads every entry only
    when a mark of a process that is gone is left (a session cut short), else it applies the
    size cap alone."""
    import os
    import subprocess
    import sys

    from jax._src.compilation_cache import compress_executable

    from composition_jax._compile_cache import _OPEN_MARK, open_session

    truncated = tmp_path / f"jit_g-{7:064x}-cache"
    truncated.write_bytes(compress_executable(b"x" * 1000)[:-4])
    assert open_session(str(tmp_path)) == 0  # no mark: the entry is not read
    assert truncated.exists()
    mine = tmp_path / f"{_OPEN_MARK}{os.getpid()}"
    assert mine.exists()
    assert open_session(str(tmp_path)) == 0  # our own mark: a live session
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead = tmp_path / f"{_OPEN_MARK}{int(gone.stdout)}"
    dead.touch()  # a session whose process has ended without removing its mark
    assert open_session(str(tmp_path)) == 1
    assert not truncated.exists() and not dead.exists() and mine.exists()
