"""``composition-jax reproduce``: output-folder rules (--force, atomicity), report schema, exit
codes. Runs one cheap scenario in the minimal size."""

from __future__ import annotations

import json

import pytest

from composition_jax import cli, report
from composition_jax.verify import scenarios as sc

ONE = "weights_w1"


def _run(out, *extra):
    return cli.main(["reproduce", "--out", str(out), "--size", "minimal", "--only", ONE,
                     "--no-progress", *extra])


def test_reproduce_writes_report_and_respects_force(tmp_path, capsys):
    out = tmp_path / "rep"
    assert _run(out) == 0
    rep = json.loads((out / "report.json").read_text())
    assert set(rep) >= {"scenarios", "environment"}
    (s,) = rep["scenarios"]
    assert set(s) >= {"name", "expected", "observed", "metrics", "reasons"}
    assert s["name"] == ONE and s["expected"] == s["observed"] == "success"
    assert s["reasons"] and "jax" in rep["environment"]
    md = (out / "report.md").read_text()
    assert ONE in md and "Decision rule" in md
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left

    # a non-empty folder is not overwritten without --force (exit 2, untouched)
    (out / "marker.txt").write_text("keep")
    assert _run(out) == 2
    assert "use --force" in capsys.readouterr().err
    assert (out / "marker.txt").read_text() == "keep"

    # with --force the previous outputs are replaced by a complete new report; the file the
    # tool did not write stays (tests/test_trust_outputs.py has the details)
    assert _run(out, "--force") == 0
    assert (out / "marker.txt").read_text() == "keep" and (out / "report.json").exists()


def test_interrupted_run_leaves_no_complete_looking_report(tmp_path, monkeypatch):
    """A scenario that raises mid-run: the old folder (with --force) is intact, no report.json
    appears in a fresh target, and no temporary folder is left behind."""
    def boom(cfg, key):
        raise RuntimeError("interrupted")

    def ok(cfg, key):
        return sc.ScenarioResult("ok", "instant", "success", "success", {"x": 1.0}, ["fake"])

    monkeypatch.setitem(sc.SCENARIOS, "boom", boom)
    monkeypatch.setitem(sc.SCENARIOS, "ok", ok)
    old = tmp_path / "old"
    report.reproduce(old, mode="minimal", only=["ok"], progress=False)  # an earlier run
    before = (old / "report.json").read_text()
    with pytest.raises(RuntimeError, match="interrupted"):
        report.reproduce(old, mode="minimal", force=True, only=["boom"], progress=False)
    assert (old / "report.json").read_text() == before
    assert not [p for p in old.iterdir() if p.name.startswith(".composition-jax-tmp")]
    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError, match="interrupted"):
        report.reproduce(fresh, mode="minimal", only=["boom"], progress=False)
    assert not fresh.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]


def test_mismatch_gives_nonzero_exit(tmp_path, monkeypatch):
    def wrong(cfg, key):
        return sc.ScenarioResult("wrong", "a scenario whose verdict disagrees", "success",
                                 "failure", {"x": 1.0}, ["forced for the test"])

    monkeypatch.setitem(sc.SCENARIOS, "wrong", wrong)
    code, out = report.reproduce(tmp_path / "o", mode="minimal", only=["wrong"],
                                 progress=False)
    assert code == 1
    rep = json.loads((out / "report.json").read_text())
    assert rep["all_agree"] is False and rep["scenarios"][0]["observed"] == "failure"


def test_unknown_scenario_is_an_error(tmp_path, capsys):
    assert cli.main(["reproduce", "--out", str(tmp_path / "x"), "--only", "nope",
                     "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "unknown scenario 'nope'" in err and "--list" in err
    assert not (tmp_path / "x").exists()
