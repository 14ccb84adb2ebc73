"""Safe outputs of ``composition-jax reproduce | bench`` (issue 13 item 3) and the command line of
issue 18: ``--force`` keeps foreign files (manifest), unusable ``--out`` refused before any work
with exit code 2 and one line on stderr, the user's umask, SIGINT/SIGTERM clean-up (130/143),
``--version``, quick by default, ``--list``, defaults in ``--help``, the git commit in
``report.json`` and the note when matplotlib is missing.

Fast: the scenarios and the benchmark are replaced by instant fakes (in-process with
monkeypatch, in subprocesses through a small driver script that registers them before calling
``cli.main``)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from composition_jax import __version__, cli, report
from composition_jax.bench import harness
from composition_jax.verify import scenarios as sc

MANIFEST = ".composition-jax-manifest.json"


def _ok(name="fake_ok", plots=None):
    def run(cfg, key):
        run.calls += 1
        return sc.ScenarioResult(name, "a fake scenario", "success", "success", {"x": 1.0},
                                 ["fake"], plots or {})

    run.calls = 0
    return run


@pytest.fixture
def fake(monkeypatch):
    """Register instant scenarios ``fake_ok`` and ``fake_fig`` (one figure) for the test."""
    ok, fig = _ok(), _ok("fake_fig", {"length": [1.0, 0.5]})
    monkeypatch.setitem(sc.SCENARIOS, "fake_ok", ok)
    monkeypatch.setitem(sc.SCENARIOS, "fake_fig", fig)
    return ok


def _rep(out, *extra, only="fake_ok"):
    return cli.main(["reproduce", "--out", str(out), "--size", "minimal", "--only", only,
                     "--no-progress", *extra])


def _one_line_error(err: str, command="reproduce") -> str:
    assert "Traceback" not in err, err
    lines = [s for s in err.splitlines() if s.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"composition-jax {command}: "), err
    return lines[0]


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.name != MANIFEST)


# ------------------------------------------------------------------------------ --force
def test_force_keeps_foreign_files_and_subfolders(tmp_path, fake, capsys):
    out = tmp_path / "rep"
    (out / "sub").mkdir(parents=True)
    (out / "important.txt").write_text("mine")
    (out / "sub" / "notes.txt").write_text("mine too")
    assert _rep(out) == 2  # non-empty, no manifest, no --force: refused as before
    assert "use --force" in capsys.readouterr().err and fake.calls == 0
    assert _rep(out, "--force") == 0
    assert (out / "important.txt").read_text() == "mine"
    assert (out / "sub" / "notes.txt").read_text() == "mine too"
    assert json.loads((out / "report.json").read_text())["scenarios"][0]["name"] == "fake_ok"
    man = json.loads((out / MANIFEST).read_text())
    assert man["tool"] == "composition-jax" and man["command"] == "reproduce"
    assert man["version"] == __version__
    assert set(man["entries"]) == {"report.md", "report.json"}
    assert _hidden(out) == [] and _hidden(tmp_path) == []


def test_force_replaces_only_the_previous_outputs(tmp_path, fake):
    out = tmp_path / "rep"
    assert _rep(out, only="fake_fig") == 0
    assert (out / "fake_fig_length.png").exists()
    (out / "mine.txt").write_text("keep")
    assert _rep(out) == 2  # a previous run's folder is not replaced without --force
    assert _rep(out, "--force") == 0  # fake_ok writes no figure: the old one was ours, goes
    assert not (out / "fake_fig_length.png").exists()
    assert (out / "mine.txt").read_text() == "keep"
    assert json.loads((out / "report.json").read_text())["scenarios"][0]["name"] == "fake_ok"
    assert set(json.loads((out / MANIFEST).read_text())["entries"]) == {"report.md",
                                                                        "report.json"}
    assert _hidden(out) == [] and _hidden(tmp_path) == []


def test_foreign_file_named_like_an_output_is_refused(tmp_path, fake, capsys):
    out = tmp_path / "rep"
    out.mkdir()
    (out / "report.json").write_text("not yours")
    assert _rep(out, "--force") == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "report.json" in line and "not written by" in line
    assert (out / "report.json").read_text() == "not yours" and fake.calls == 0
    assert sorted(p.name for p in out.iterdir()) == ["report.json"] and _hidden(tmp_path) == []


def test_clash_known_only_at_the_end_leaves_the_target_alone(tmp_path):
    from composition_jax import _outputs

    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("k")
    target = _outputs.check_target(out, command="reproduce", force=True, outputs={"a.txt"})
    with pytest.raises(_outputs.OutputError, match="late.png"), _outputs.Staging(target) as st:
        (st.path / "a.txt").write_text("new")
        (st.path / "late.png").write_text("new")
        (out / "late.png").write_text("foreign, appeared during the run")
        st.commit(last="a.txt")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt", "late.png"]
    assert (out / "late.png").read_text().startswith("foreign")


def test_other_commands_manifest_and_broken_manifest_are_refused(tmp_path, fake, capsys,
                                                                monkeypatch):
    out = tmp_path / "rep"
    assert _rep(out) == 0
    called = []
    monkeypatch.setattr(harness, "run_bench", lambda *a, **k: called.append(1))
    assert cli.main(["bench", "--out", str(out), "--force"]) == 2
    assert "composition-jax reproduce" in _one_line_error(capsys.readouterr().err, "bench")
    assert not called and (out / "report.json").exists()
    (out / MANIFEST).write_text("{not json")
    assert _rep(out, "--force") == 2
    assert "manifest" in _one_line_error(capsys.readouterr().err)
    assert (out / "report.json").exists()


def test_bench_force_keeps_foreign_files_and_drops_stale_outputs(tmp_path, monkeypatch):
    def fake_bench(out_dir, **kw):
        harness._write([{"impl": "numpy"}], {}, {}, True, Path(out_dir))
        (Path(out_dir) / "table.md").write_text("| new |\n")
        return {"records": []}

    monkeypatch.setattr(harness, "run_bench", fake_bench)
    out = tmp_path / "b"
    assert cli.main(["bench", "--out", str(out)]) == 0
    man = json.loads((out / MANIFEST).read_text())
    assert man["command"] == "bench" and set(man["entries"]) == {"results.json", "table.md"}
    # a previous run had written a plot this one does not: it is removed; foreign files stay
    (out / "scaling.png").write_text("old plot")
    man["entries"].append("scaling.png")
    (out / MANIFEST).write_text(json.dumps(man))
    (out / "mine.txt").write_text("keep")
    assert cli.main(["bench", "--out", str(out), "--force"]) == 0
    assert not (out / "scaling.png").exists() and (out / "mine.txt").read_text() == "keep"
    assert json.loads((out / "results.json").read_text())["records"] == [{"impl": "numpy"}]
    # a foreign file named like an output is refused
    (out / "results.json").unlink()
    man = json.loads((out / MANIFEST).read_text())
    man["entries"].remove("results.json")
    (out / MANIFEST).write_text(json.dumps(man))
    (out / "results.json").write_text("foreign")
    assert cli.main(["bench", "--out", str(out), "--force"]) == 2
    assert (out / "results.json").read_text() == "foreign"


# ------------------------------------------------------------------------------ unusable targets
def _cases(tmp_path: Path, monkeypatch) -> dict:
    cwd = tmp_path / "a" / "b"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("# mine")
    monkeypatch.setenv("HOME", str(home))
    (tmp_path / "afile").write_text("x")
    return {
        "dot": (".", "current folder"),
        "cwd": (str(cwd), "current folder"),
        "ancestor": (str(tmp_path / "a"), "current folder"),
        "home": (str(home), "home folder"),
        "file": (str(tmp_path / "afile"), "not a folder"),
        "parent_is_file": (str(tmp_path / "afile" / "rep"), "not a folder"),
    }


@pytest.mark.parametrize("case", ["dot", "cwd", "ancestor", "home", "file", "parent_is_file"])
@pytest.mark.parametrize("force", [False, True])
def test_unusable_targets_refused_before_any_work(tmp_path, monkeypatch, fake, capsys, case,
                                                  force):
    out, why = _cases(tmp_path, monkeypatch)[case]
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    assert _rep(out, *(["--force"] if force else [])) == 2
    assert why in _one_line_error(capsys.readouterr().err)
    assert fake.calls == 0
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # nothing created or removed


def test_root_refused(tmp_path, monkeypatch, fake, capsys):
    monkeypatch.chdir(tmp_path)
    assert _rep("/") == 2
    assert "root folder" in _one_line_error(capsys.readouterr().err) and fake.calls == 0


def test_unwritable_folder_refused(tmp_path, monkeypatch, fake, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:  # root writes anyway: emulate what os.access says for a normal user
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, m, *a, **k: False if Path(p) == ro
                            else real(p, m, *a, **k))
    else:
        ro.chmod(0o555)
    try:
        for out in (ro, ro / "new" / "rep"):
            assert _rep(out, "--force") == 2
            assert "cannot" in _one_line_error(capsys.readouterr().err)
            assert fake.calls == 0 and list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_failed_probe_refused(tmp_path, monkeypatch, fake, capsys):
    """os.access can say yes where writing fails (root squash, ACLs): the probe file decides."""
    import tempfile

    def no(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", no)
    assert _rep(tmp_path / "rep") == 2
    assert "Permission denied" in _one_line_error(capsys.readouterr().err)
    assert fake.calls == 0 and list(tmp_path.iterdir()) == []


def test_write_error_during_the_run_is_exit_2_without_traceback(tmp_path, fake, monkeypatch,
                                                                capsys):
    def full(*a, **k):
        raise OSError(28, "No space left on device", "report.md")

    monkeypatch.setattr(report, "_markdown", full)
    assert _rep(tmp_path / "rep") == 2
    assert "No space left on device" in _one_line_error(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ permissions
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_follow_the_umask(tmp_path, fake, umask):
    old = os.umask(umask)
    try:
        out = tmp_path / "new" / "rep"
        assert _rep(out, only="fake_fig") == 0
        bench_out = tmp_path / "bench"
        bench_out.mkdir()
        harness._write([], {}, {}, True, bench_out)
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE(out.parent.stat().st_mode) == 0o777 & ~umask
    for f in ("report.md", "report.json", "fake_fig_length.png", MANIFEST):
        assert stat.S_IMODE((out / f).stat().st_mode) == 0o666 & ~umask, f
    res = bench_out / "results.json"
    assert stat.S_IMODE(res.stat().st_mode) == 0o666 & ~umask
    assert json.loads(res.read_text())["complete"] is False
    assert sorted(p.name for p in bench_out.iterdir()) == ["results.json"]


# ------------------------------------------------------------------------------ signals
DRIVER = textwrap.dedent('''
    import os, signal, sys, time
    from pathlib import Path
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in an interactive start
    from composition_jax.verify import scenarios as sc
    from composition_jax.bench import harness

    def wait():
        Path(os.environ["CJ_TEST_STARTED"]).write_text("started")
        t0 = time.time()
        while time.time() - t0 < 60:
            time.sleep(0.05)
        raise RuntimeError("not interrupted")

    def slow(cfg, key):
        wait()

    def ok(cfg, key):
        return sc.ScenarioResult("fake_ok", "fake", "success", "success", {"x": 1.0}, ["f"])

    def slow_bench(out_dir, **kw):
        harness._write([{"impl": "numpy"}], {}, {}, True, Path(out_dir))
        wait()

    sc.SCENARIOS["slow"] = slow
    sc.SCENARIOS["fake_ok"] = ok
    harness.run_bench = slow_bench
    from composition_jax import cli
    sys.exit(cli.main(sys.argv[1:]))
''')


def _driver(tmp_path: Path, *args, started: Path | None = None, **kw):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = dict(os.environ, CJ_TEST_STARTED=str(started or tmp_path / "started"))
    return subprocess.Popen([sys.executable, str(script), *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def _interrupt(proc, started: Path, sig) -> tuple[int, str]:
    t0 = time.time()
    while not started.exists():
        if proc.poll() is not None or time.time() - t0 > 120:
            proc.kill()
            raise AssertionError(f"the run did not start: {proc.communicate()}")
        time.sleep(0.05)
    time.sleep(0.2)
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, err


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_leaves_nothing_behind(tmp_path, sig, code):
    """A new target: nothing at all appears; an earlier run's folder (with --force) keeps its
    outputs and foreign files; no staging folder is left; exit code 128 + signal."""
    work = tmp_path / "w"
    work.mkdir()
    started = tmp_path / "started"
    procs = [_driver(work, "reproduce", "--out", str(work / "new"), "--size", "minimal",
                     "--only", "slow", "--no-progress", started=started)]
    rc, err = _interrupt(procs[0], started, sig)
    assert rc == code, err
    assert "Traceback" not in err and ("interrupted" in err or "terminated" in err), err
    assert sorted(p.name for p in work.iterdir()) == ["driver.py"]

    old = work / "old"
    started.unlink()
    assert subprocess.run([sys.executable, str(work / "driver.py"), "reproduce", "--out",
                           str(old), "--size", "minimal", "--only", "fake_ok",
                           "--no-progress"], capture_output=True, check=False).returncode == 0
    (old / "mine.txt").write_text("keep")
    before = {p.name: p.read_bytes() for p in old.iterdir()}
    rc, err = _interrupt(_driver(work, "reproduce", "--out", str(old), "--size", "minimal",
                                 "--only", "slow", "--no-progress", "--force",
                                 started=started), started, sig)
    assert rc == code, err
    assert {p.name: p.read_bytes() for p in old.iterdir()} == before
    assert sorted(p.name for p in work.iterdir()) == ["driver.py", "old"]


def test_bench_sigterm_keeps_partial_results_flagged(tmp_path):
    started = tmp_path / "started"
    out = tmp_path / "b"
    rc, err = _interrupt(_driver(tmp_path, "bench", "--out", str(out), started=started),
                         started, signal.SIGTERM)
    assert rc == 143, err
    res = json.loads((out / "results.json").read_text())
    assert res["complete"] is False and res["records"] == [{"impl": "numpy"}]
    assert json.loads((out / MANIFEST).read_text())["entries"] == ["results.json"]
    assert _hidden(out) == [] and _hidden(tmp_path) == []


def test_bench_failure_keeps_partial_results_and_exits_3(tmp_path, monkeypatch, capsys):
    def broken(out_dir, **kw):
        harness._write([{"impl": "numpy"}], {}, {}, True, Path(out_dir))
        raise RuntimeError("a bug")

    monkeypatch.setattr(harness, "run_bench", broken)
    out = tmp_path / "b"
    assert cli.main(["bench", "--out", str(out)]) == 3
    assert "RuntimeError: a bug" in capsys.readouterr().err
    assert json.loads((out / "results.json").read_text())["complete"] is False
    assert _hidden(tmp_path) == []


def test_signals_during_a_commit_are_deferred(tmp_path):
    from composition_jax import _outputs

    seen = []
    before = signal.getsignal(signal.SIGTERM)
    with (pytest.raises(_outputs.Terminated), _outputs.signals_raise(),
          _outputs.deferred_signals()):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        seen.append("block finished")
    assert seen == ["block finished"]
    assert signal.getsignal(signal.SIGTERM) == before


# ------------------------------------------------------------------------------ CLI (issue 18)
def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"composition-jax {__version__}"


def _fake_reproduce(monkeypatch):
    seen = {}

    def fake(out, **kw):
        seen.update(kw)
        out = Path(out)
        out.mkdir()
        (out / "report.json").write_text(json.dumps(
            {"scenarios": [], "mismatches": [], "inconclusive": [], "learned": "off"}))
        return 0, out

    monkeypatch.setattr(report, "reproduce", fake)
    return seen


@pytest.mark.parametrize("argv,mode", [([], "quick"), (["--quick"], "quick"),
                                       (["--size", "full"], "full"),
                                       (["--size", "minimal"], "minimal")])
def test_reproduce_defaults_to_quick(tmp_path, monkeypatch, argv, mode):
    seen = _fake_reproduce(monkeypatch)
    assert cli.main(["reproduce", "--out", str(tmp_path / "o"), *argv]) == 0
    assert seen["mode"] == mode


def test_list_prints_the_scenarios(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()[1:]}
    assert list(rows) == list(sc.SCENARIOS)
    assert rows["eq17_empty_background"] == "success"
    assert rows["weights_w2"] == "failure" and rows["feature_shear"] == "failure"
    assert set(rows.values()) <= {"success", "failure"}
    assert all(len(line.split(maxsplit=2)) == 3 for line in out.splitlines()[1:])
    assert list(tmp_path.iterdir()) == []  # --list writes nothing

    def plain(cfg, key):
        """(z9) A plain function standing in for a scenario: its docstring says -> failure."""

    monkeypatch.setitem(sc.SCENARIOS, "plain", plain)
    assert cli.main(["reproduce", "--list"]) == 0
    last = capsys.readouterr().out.splitlines()[-1].split(maxsplit=2)
    desc = "A plain function standing in for a scenario: its docstring says"
    assert last == ["plain", "failure", desc]


def test_help_shows_defaults_exit_codes_and_runtime(capsys):
    def helptext(*argv):
        with pytest.raises(SystemExit):
            cli.main([*argv, "--help"])
        return " ".join(capsys.readouterr().out.split())

    top = helptext()
    assert "exit codes" in top and "demo" in top and "prints" in top
    rep = helptext("reproduce")
    for s in ("(default: quick)", "(default: reproduce_out)", "--list", "minutes of CPU time",
              "runtime was not measured", "about 3.5 extra minutes", "exit codes", "130", "143",
              ".composition-jax-manifest.json"):
        assert s in rep, s
    assert "default: None" not in rep
    bench = helptext("bench")
    assert "(default: bench_out)" in bench and "exit codes" in bench


def test_report_records_version_and_git_commit():
    env = report.environment()
    assert env["composition_jax"] == __version__
    pkg = Path(report.__file__).parent
    git = shutil.which("git")
    head = subprocess.run(["git", "-C", str(pkg), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=False) if git else None
    if head is not None and head.returncode == 0:
        assert env["git_commit"] == head.stdout.strip()
        assert env["git_dirty"] in (True, False)
    else:
        assert env["git_commit"] is None
    json.dumps(env)


def test_missing_matplotlib_is_said_once(tmp_path, fake, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    out = tmp_path / "rep"
    assert _rep(out, only="fake_fig,fake_ok") == 0
    cap = capsys.readouterr()
    assert cap.err.count("matplotlib is not installed") == 1
    assert 'composition-jax[dev]' in cap.err and "no figures" in cap.out
    assert "Figures skipped" in (out / "report.md").read_text()
    assert json.loads((out / "report.json").read_text())["figures"] is False
    assert not list(out.glob("*.png"))


def test_cli_entry_point_refusal_is_one_line(tmp_path):
    """The real entry point in a subprocess: a parent that cannot be created -> exit 2."""
    (tmp_path / "afile").write_text("x")
    proc = subprocess.run([sys.executable, "-m", "composition_jax.cli", "reproduce", "--out",
                           str(tmp_path / "afile" / "rep"), "--size", "minimal", "--only",
                           "weights_w1"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    _one_line_error(proc.stderr)
