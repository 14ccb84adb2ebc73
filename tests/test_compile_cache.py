"""The command line's persistent compilation cache (composition_jax._compile_cache): a second
process reuses the programs the first one compiled; a folder others can write is refused; the
environment's opt-out and JAX's own setting win; ``reproduce --no-compile-cache`` reaches it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from composition_jax import _compile_cache, cli

_DRIVER = r"""
import json, os, sys, warnings
import jax
hits = []
jax.monitoring.register_event_listener(
    lambda e, **kw: hits.append(1) if e == "/jax/compilation_cache/cache_hits" else None)
from composition_jax._compile_cache import enable_for_cli
root, shared = sys.argv[1], sys.argv[2]
out = {}
os.environ["COMPOSITION_JAX_COMPILE_CACHE"] = "off"
out["env_off"] = enable_for_cli(True, cache=root)
del os.environ["COMPOSITION_JAX_COMPILE_CACHE"]
out["flag_off"] = enable_for_cli(False, cache=root)
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    out["shared"] = enable_for_cli(True, cache=shared)
out["shared_warning"] = [str(x.message) for x in w]
out["on"] = enable_for_cli(True, cache=root)
import jax.numpy as jnp
out["value"] = float(jax.jit(lambda x: jnp.sum(x * 2.0 + 1.0))(jnp.arange(3.0)))
out["hits"] = len(hits)
out["configured"] = enable_for_cli(True, cache=shared)  # JAX has a folder now: kept
print(json.dumps(out))
"""


def _drive(tmp_path: Path) -> dict:
    root, shared = tmp_path / "cache", tmp_path / "shared"
    shared.mkdir(exist_ok=True)
    os.chmod(shared, 0o777)
    env = {k: v for k, v in os.environ.items()
           if k not in ("JAX_COMPILATION_CACHE_DIR", "COMPOSITION_JAX_COMPILE_CACHE")}
    env["JAX_PLATFORMS"] = "cpu"
    r = subprocess.run([sys.executable, "-c", _DRIVER, str(root), str(shared)], env=env,
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_second_process_reuses_the_first_ones_programs(tmp_path):
    xla = tmp_path / "cache" / "xla"
    first = _drive(tmp_path)
    assert first["env_off"] == [None, "off (COMPOSITION_JAX_COMPILE_CACHE)"]
    assert first["flag_off"] == [None, "off (--no-compile-cache)"]
    assert first["shared"][0] is None and "writable by group and others" in first["shared"][1]
    assert any("not using the compilation cache" in m for m in first["shared_warning"])
    assert not (tmp_path / "shared" / "xla").exists()  # nothing created in a shared folder
    assert first["on"] == [str(xla), f"on ({xla})"]
    assert first["value"] == 9.0 and first["hits"] == 0
    assert first["configured"][0] == str(xla) and "JAX's own" in first["configured"][1]
    entries = sorted(p.name for p in xla.glob("*-cache"))
    assert entries, "nothing was written to the cache"
    assert (xla.stat().st_mode & 0o777) == 0o700
    assert not list(xla.glob(".session-open-*"))  # the process removed its mark at exit

    second = _drive(tmp_path)
    assert second["value"] == 9.0
    assert second["hits"] >= 1  # the jitted program (and the eager ops) came from the cache
    assert sorted(p.name for p in xla.glob("*-cache")) == entries  # nothing compiled anew


def test_reproduce_flag_reaches_the_cache_switch(tmp_path, monkeypatch):
    from test_trust_outputs import _fake_reproduce  # tests/ is on sys.path (pytest rootdir)

    calls = []
    monkeypatch.setattr(_compile_cache, "enable_for_cli", lambda enabled: calls.append(enabled))
    _fake_reproduce(monkeypatch)
    assert cli.main(["reproduce", "--out", str(tmp_path / "a")]) == 0
    assert cli.main(["reproduce", "--out", str(tmp_path / "b"), "--no-compile-cache"]) == 0
    assert calls == [True, False]


def test_mark_stays_while_work_beside_the_main_thread_runs(tmp_path):
    """close_session at the end of a process leaves the folder marked while a thread of
    _threads.beside still runs (an interrupted run: it may be cut in the middle of a write, so
    the next process checks every entry); once it has finished the mark goes."""
    import threading

    from composition_jax import _threads

    _compile_cache.open_session(tmp_path)
    mark = tmp_path / f"{_compile_cache._OPEN_MARK}{os.getpid()}"
    assert mark.exists()
    go = threading.Event()
    join = _threads.beside(lambda: go.wait(30), "test-writer")
    assert _threads.running()
    _compile_cache.close_session(tmp_path)
    assert mark.exists()
    go.set()
    assert join() is True
    assert not _threads.running()
    _compile_cache.close_session(tmp_path)
    assert not mark.exists()


def test_reused_mlir_context_lowers_the_same_module():
    """The suite lowers in a reused MLIR context (tests/conftest.py): the same module text,
    debug locations included (so the same compiled program and persistent-cache key), as
    JAX's fresh context per lowering, for a sampler run, a network and a small program, each
    lowered again after the others in the same context (new functions each time: JAX caches a
    lowering per traced function)."""
    import jax
    import jax.numpy as jnp
    from jax._src.interpreters import mlir

    import composition_jax as cj

    reused = getattr(mlir.make_ir_context, "_reused", False)
    if os.environ.get("COMPOSITION_JAX_TEST_FRESH_MLIR", "") not in ("", "0"):
        assert not reused
        return
    assert reused
    a, b, c = (mlir.make_ir_context() for _ in range(3))
    assert a is b or b is c  # one context per 256 lowerings
    sch = cj.VPSchedule()
    g = cj.diffuse(cj.Gaussian(jnp.zeros(3), jnp.eye(3)), sch)
    net = cj.nn.MLPScoreNet(dim=3, hidden=8, depth=1)
    m = cj.nn.ScoreNetModel(net, cj.nn.init_params(net, jax.random.key(0)), sch)

    def texts():
        progs = [
            (lambda k: cj.sample(k, g, sch, (8, 3), steps=3), jax.random.key(1)),
            (lambda x: m.score(x, 0.5), jnp.ones(3)),
            (lambda x: jnp.sum(x * 2.0 + 1.0), jnp.arange(3.0)),
        ]
        return [jax.jit(f).lower(arg).as_text(debug_info=True) for f, arg in progs]

    patched, made, out = mlir.make_ir_context, [], {}
    for mode in ("reused", "reused again", "fresh"):  # one call site: the same locations
        if mode == "fresh":
            mlir.make_ir_context = lambda: made.append(1) or patched._fresh()
        try:
            out[mode] = texts()
        finally:
            mlir.make_ir_context = patched
    assert len(made) >= 3  # each lowered anew, in a fresh context
    assert out["reused"] == out["fresh"] and out["reused again"] == out["fresh"]
