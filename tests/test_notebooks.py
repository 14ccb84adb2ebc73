"""The notebooks in ``notebooks/`` run, check their own numbers, and stay paired.

* Every ``notebooks/NN_*.py`` (jupytext percent format, the source of truth) is executed as a
  plain script in its own process with ``COMPOSITION_JAX_QUICK=1``. Each notebook asserts its key
  numbers (verdicts, exact composed laws, gaps, sampler laws vs samples) and checks that every
  figure's axes are labelled; a failing assertion fails the test with the script's output. This
  needs none of the Jupyter packages, so it runs in the default suite on a fresh ``dev`` install.
  The processes share a JAX persistent compilation cache (a temporary folder for this test
  session) so that kernels compiled by one notebook (statistics, samplers of the same shape) are
  not compiled again by the next.
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
    return tmp_path_factory.mktemp("jax_compilation_cache")


def test_notebooks_found():
    assert len(NOTEBOOKS) >= 7, [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs_in_quick_mode(path, tmp_path, jax_cache):
    proc = subprocess.run([sys.executable, str(path)], check=False, cwd=ROOT,
                          env=_env(tmp_path, jax_cache), capture_output=True, text=True,
                          timeout=900)
    out = proc.stdout[-4000:] + "\n--- stderr ---\n" + proc.stderr[-6000:]
    assert proc.returncode == 0, out
    assert "all checks passed" in proc.stdout, out
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
