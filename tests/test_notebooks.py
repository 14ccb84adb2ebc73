"""The notebooks in ``notebooks/`` run, check their own numbers, and stay paired.

* Every ``notebooks/NN_*.py`` (jupytext percent format, the source of truth) is executed as a
  plain script in its own process with ``COMPOSITION_JAX_QUICK=1`` and
  ``COMPOSITION_JAX_CHECKS=raise``. Each notebook checks its key numbers (verdicts, exact
  composed laws, gaps, sampler laws vs samples) and that every figure's axes are labelled with
  ``composition_jax._notebook.Checks``: for a reader a failed check prints a warning, here it
  raises, and the test fails with the script's output. This
  needs none of the Jupyter packages, so it runs in the default suite on a fresh ``dev`` install.
  On Linux the processes are forked from one server process that has already imported what
  every notebook imports first (jax, numpy, scipy, matplotlib, composition_jax: ~3.5 s of CPU per
  process otherwise); importing starts no JAX backend, so no threads are forked, and each child
  runs its notebook as ``__main__`` with fresh globals, its own output and exit status.
  The processes share the test run's JAX persistent compilation cache
  (``$JAX_COMPILATION_CACHE_DIR``, see conftest.py; a temporary folder for this test session when
  that is disabled) so that kernels compiled by one notebook (statistics, samplers of the same
  shape) are not compiled again by the next.
* The committed ``.ipynb`` must be the jupytext rendering of the ``.py`` with no outputs
  (compared with jupytext when it is installed, else code cell by code cell).
* ``slow``: the ``.ipynb`` executes in a Jupyter kernel (nbclient; skipped without it), and
  notebook 3's learned-model section runs at its minimal size.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
IDS = [p.stem for p in NOTEBOOKS]


def _env(figures: Path, cache: Path) -> dict:
    env = dict(os.environ)
    env.pop("JAX_ENABLE_X64", None)  # notebooks run in JAX's default float32
    env.update(
        COMPOSITION_JAX_QUICK="1",
        COMPOSITION_JAX_CHECKS="raise",  # a failed notebook check raises (readers get a warning)
        COMPOSITION_JAX_FIGURES=str(figures),
        MPLBACKEND="Agg",
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory) -> Path:
    shared = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    return Path(shared) if shared else tmp_path_factory.mktemp("jax_compilation_cache")


# The fork server (see the module doc). A request is one JSON line (path, env additions, stdout
# and stderr files, timeout); the answer is one JSON line with the child's exit status, which is
# what `python path` would return (1 on an uncaught exception, -14 when the timeout's SIGALRM
# ends it).
_FORK_SERVER = r"""
import atexit, json, os, runpy, signal, sys, traceback
import matplotlib
matplotlib.use("Agg")
import jax, jax.numpy, matplotlib.pyplot, numpy, scipy.stats
import composition_jax
from jax._src import xla_bridge
assert not xla_bridge._backends, "a JAX backend was started before fork"
for line in sys.stdin:
    req = json.loads(line)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            signal.alarm(req["timeout"])
            os.environ.update(req["env"])
            for fd, name in ((1, "stdout"), (2, "stderr")):
                f = os.open(req[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(f, fd)
                os.close(f)
            sys.argv = [req["path"]]
            sys.path[0] = os.path.dirname(req["path"])
            runpy.run_path(req["path"], run_name="__main__")
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            traceback.print_exc()
        finally:
            try:
                atexit._run_exitfuncs()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), flush=True)
"""
NOTEBOOK_TIMEOUT_S = 900


@pytest.fixture(scope="module")
def run_notebook(jax_cache, tmp_path_factory):
    """``run(path, figures) -> (returncode, stdout, stderr)``: ``path`` run as a script in its
    own process (forked from the server on Linux, a fresh interpreter elsewhere)."""
    if not sys.platform.startswith("linux"):
        def run_fresh(path, figures):
            proc = subprocess.run([sys.executable, str(path)], check=False, cwd=ROOT,
                                  env=_env(figures, jax_cache), capture_output=True, text=True,
                                  timeout=NOTEBOOK_TIMEOUT_S)
            return proc.returncode, proc.stdout, proc.stderr

        yield run_fresh
        return
    logs = tmp_path_factory.mktemp("notebook_server")
    server_err = logs / "server.stderr"
    with open(server_err, "w") as err:
        server = subprocess.Popen([sys.executable, "-c", _FORK_SERVER], cwd=ROOT,
                                  env=_env(logs, jax_cache), stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=err, text=True)

    def run(path, figures):
        out, errf = logs / f"{path.stem}.stdout", logs / f"{path.stem}.stderr"
        req = {"path": str(path), "env": {"COMPOSITION_JAX_FIGURES": str(figures)},
               "stdout": str(out), "stderr": str(errf), "timeout": NOTEBOOK_TIMEOUT_S}
        try:
            server.stdin.write(json.dumps(req) + "\n")
            server.stdin.flush()
            answer = server.stdout.readline()
        except BrokenPipeError:
            answer = ""
        if not answer:
            pytest.fail(f"the notebook fork server died:\n{server_err.read_text()[-6000:]}")
        texts = [f.read_text() if f.exists() else "" for f in (out, errf, server_err)]
        return json.loads(answer)["returncode"], texts[0], texts[1] + texts[2]

    yield run
    server.stdin.close()
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def test_notebooks_found():
    assert len(NOTEBOOKS) >= 7, [p.name for p in NOTEBOOKS]


def test_notebook_checks_raise_in_tests_and_warn_for_readers(monkeypatch, capsys):
    """The notebooks' check helper: strict (raises) under this suite, a visible warning and a
    failed summary otherwise; "all checks passed" only when every check held."""
    from composition_jax._notebook import CheckFailed, Checks

    monkeypatch.setenv("COMPOSITION_JAX_CHECKS", "raise")
    c = Checks("demo")
    assert c.that(True, "holds") and c.close([1.0, 2.0], [1.0, 2.0 + 1e-9], rtol=1e-6)
    with pytest.raises(CheckFailed, match="demo: the mean is 1"):
        c.that(False, "the mean is 1")
    with pytest.raises(CheckFailed, match="C\\[p\\] mean"):
        c.close([1.0], [1.1], atol=0.01, what="C[p] mean")
    monkeypatch.delenv("COMPOSITION_JAX_CHECKS")
    c = Checks("demo")
    assert not c.that(False, "the mean is 1") and c.that(1 > 0, "one is positive")
    assert not c.done()
    out = capsys.readouterr()
    assert "CHECK FAILED (demo): the mean is 1" in out.out and "CHECK FAILED" in out.err
    assert "all checks passed" not in out.out and "1 of 2 checks FAILED" in out.out
    c = Checks("demo")
    c.that(True, "holds")
    assert c.done() and "demo: all checks passed" in capsys.readouterr().out


def test_notebooks_using_checks_have_no_bare_asserts():
    """A notebook on the check helper keeps every expectation in it: a bare ``assert`` would
    stop a reader's notebook instead of warning."""
    import re

    for path in NOTEBOOKS:
        text = path.read_text()
        if "composition_jax._notebook" not in text:
            continue
        bad = [ln for ln in text.splitlines()
               if re.match(r"\s*(assert\b|np\.testing\.assert_)", ln)]
        assert not bad, f"{path.name}: use checks.that / checks.close instead of {bad}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs_in_quick_mode(path, tmp_path, run_notebook):
    returncode, stdout, stderr = run_notebook(path, tmp_path)
    out = stdout[-4000:] + "\n--- stderr ---\n" + stderr[-6000:]
    assert returncode == 0, out
    assert "all checks passed" in stdout, out
    assert sorted(tmp_path.glob("*.png")), f"{path.name} saved no figure\n{out}"


def _py_code_cells(text: str) -> list[str]:
    """Code cells of a jupytext percent script (fallback when jupytext is not installed)."""
    cells, cur, kind = [], [], None
    for line in text.splitlines():
        if line.startswith("# %%"):
            if kind == "code":
                cells.append("\n".join(cur).strip())
            kind = "markdown" if "[markdown]" in line else "code"
            cur = []
        elif kind is not None:
            cur.append(line)
    if kind == "code":
        cells.append("\n".join(cur).strip())
    return [c for c in cells if c]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_ipynb_is_paired_and_stripped(path):
    ipynb = path.with_suffix(".ipynb")
    assert ipynb.exists(), f"run: jupytext --to ipynb {path.relative_to(ROOT)}"
    nb = json.loads(ipynb.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell.get("outputs", []) == [] and cell.get("execution_count") is None, (
                f"{ipynb.name} has outputs: commit it stripped")
    try:
        import jupytext
    except ImportError:
        got = [("".join(c["source"])).strip() for c in nb["cells"] if c["cell_type"] == "code"]
        assert got == _py_code_cells(path.read_text()), (
            f"{ipynb.name} is out of sync: jupytext --to ipynb {path.relative_to(ROOT)}")
        return
    ref = jupytext.read(path)
    want = [(c.cell_type, c.source) for c in ref.cells]
    got = [(c["cell_type"], "".join(c["source"])) for c in nb["cells"]]
    assert got == want, f"{ipynb.name} is out of sync: jupytext --to ipynb {path.relative_to(ROOT)}"


@pytest.mark.slow
def test_length_generalization_learned_section_runs(tmp_path, jax_cache):
    """Notebook 3's learned-model section (skipped in quick mode) at its minimal size."""
    env = dict(_env(tmp_path, jax_cache), COMPOSITION_JAX_NB_LEARNED="minimal")
    path = ROOT / "notebooks" / "03_length_generalization.py"
    proc = subprocess.run([sys.executable, str(path)], check=False, cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]
    assert "learned_length_empty" in proc.stdout
    assert (tmp_path / "03_length_learned.png").exists()


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_ipynb_executes_in_a_kernel(path, tmp_path, jax_cache, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    for k, v in _env(tmp_path, jax_cache).items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("JAX_ENABLE_X64", raising=False)
    nb = nbformat.read(path.with_suffix(".ipynb"), as_version=4)
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(ROOT / "notebooks")}})
    client.execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []))
    assert "all checks passed" in text
