"""Safe output folders for the command line (``composition-jax reproduce | bench``).

The rules, in one place:

* **Targets are checked before any work.** Refused: an empty name, the current folder or any of
  its ancestors (``--out .``, ``--out ..``, ``/``), the home folder or its ancestors, an existing
  path that is not a folder, a folder that cannot be written (``os.access`` *and* a probe file),
  a missing folder whose nearest existing ancestor is not a writable folder. Every refusal is an
  :class:`OutputError` with a one-line message (the command line turns it into exit code 2).
* **A manifest records what the tool wrote.** ``.composition-jax-manifest.json`` in the output
  folder lists the top-level files/folders written by the last run, with the tool, the command
  and the version. ``force`` replaces exactly those entries; every other file or subfolder
  (*foreign* entries) stays. A non-empty folder is refused without ``force`` (whether or not it
  has a manifest). A foreign entry with the same name as an output is never overwritten: the run
  is refused up front when the name is known in advance (``report.md``, ``report.json``, the
  figure names of the selected scenarios, ``results.json`` ...) and, for names only known at the
  end, the finished run is not moved into place (the target stays untouched). A manifest of the
  other command (``bench`` outputs in a ``reproduce`` folder or the reverse) or an unreadable
  manifest is refused too.
* **Staging and commit.** Outputs are written into a hidden staging folder: next to the target
  when the target does not exist yet (``.<name>.composition-jax-tmp-XXXX``; the commit is one
  atomic rename), inside it when it exists (``.composition-jax-tmp-XXXX``; the commit removes the
  previous outputs, moves the new ones in with the completion marker, e.g. ``report.json``,
  last, then writes the final manifest). SIGINT/SIGTERM arriving during the commit are deferred
  until it is done. Any exception (``KeyboardInterrupt`` included) before the commit removes the
  staging folder and leaves the target as it was.
* **Permissions.** Folders get ``0o777 & ~umask`` and files ``0o666 & ~umask`` (the staging
  folder, created ``0o700`` by :func:`tempfile.mkdtemp`, is chmod-ed before it becomes the
  target).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

__all__ = [
    "MANIFEST",
    "OutputError",
    "OutputExists",
    "Staging",
    "Target",
    "Terminated",
    "check_target",
    "current_umask",
    "deferred_signals",
    "read_manifest",
    "signals_raise",
]

MANIFEST = ".composition-jax-manifest.json"
TOOL = "composition-jax"
_STAGING_INSIDE = ".composition-jax-tmp-"
_PART = ".part"


class OutputError(Exception):
    """The output folder cannot be used (a usage or I/O problem; command-line exit code 2)."""


class OutputExists(OutputError):
    """The output folder exists and is not empty, and ``force`` is off."""


class Terminated(BaseException):
    """Raised by the SIGTERM handler of :func:`signals_raise` (like ``KeyboardInterrupt`` for
    SIGINT); ``signum`` is the signal number (exit code ``128 + signum``)."""

    def __init__(self, signum: int):
        super().__init__(f"terminated by signal {signum}")
        self.signum = signum


def current_umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _version() -> str:
    try:
        from . import __version__

        return str(__version__)
    except Exception:  # noqa: BLE001 - a manifest must still be written
        return "unknown"


# ------------------------------------------------------------------------------ signals
def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """For the duration of the block, SIGTERM raises :class:`Terminated` (SIGINT keeps raising
    ``KeyboardInterrupt``; a SIGINT that was ignored when the process started stays ignored).
    The previous handlers are restored afterwards. A no-op outside the main thread."""
    if not _main_thread():
        yield
        return

    def on_term(signum, frame):
        raise Terminated(signum)

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT and SIGTERM while the block runs (a short commit), then deliver them to the
    handlers that were in place (so a ``KeyboardInterrupt``/:class:`Terminated` is raised after
    the block). A no-op outside the main thread."""
    if not _main_thread():
        yield
        return
    got: list[int] = []
    sigs = (signal.SIGINT, signal.SIGTERM)
    old = {}
    for s in sigs:
        prev = signal.getsignal(s)
        if prev is signal.SIG_IGN:
            continue
        old[s] = prev
        signal.signal(s, lambda signum, frame: got.append(signum))
    try:
        yield
    finally:
        for s, prev in old.items():
            signal.signal(s, prev)
        if got:
            signum = got[0]
            prev = old[signum]
            if callable(prev):
                prev(signum, None)
            elif signum == signal.SIGINT:
                raise KeyboardInterrupt
            else:
                raise Terminated(signum)


# ------------------------------------------------------------------------------ manifest
def read_manifest(folder: Path, command: str | None = None) -> list[str] | None:
    """The entries listed in ``folder``'s manifest, or ``None`` when there is none.

    Raises :class:`OutputError` for a manifest that cannot be read, is not ours, lists unsafe
    names, or (with ``command``) was written by another command."""
    path = Path(folder) / MANIFEST
    if not os.path.lexists(path):
        return None
    where = f"{path}"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise OutputError(f"cannot read the manifest {where} ({e}); remove it or choose another "
                          "--out") from None
    if not isinstance(data, dict) or data.get("tool") != TOOL or not isinstance(
            data.get("entries"), list):
        raise OutputError(f"{where} is not a composition-jax manifest; remove it or choose "
                          "another --out")
    entries = data["entries"]
    for e in entries:
        if (not isinstance(e, str) or e in ("", ".", "..", MANIFEST) or "/" in e or "\\" in e
                or "\0" in e):
            raise OutputError(f"the manifest {where} lists an invalid entry {e!r}; remove it or "
                              "choose another --out")
    if command is not None and data.get("command") != command:
        raise OutputError(f"{folder} holds the outputs of `{TOOL} {data.get('command')}` (see "
                          f"{MANIFEST}); choose another --out")
    return list(entries)


def _write_manifest(folder: Path, command: str, entries: Iterable[str]) -> None:
    data = {"tool": TOOL, "command": command, "version": _version(),
            "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "entries": sorted(set(entries))}
    part = folder / (MANIFEST + _PART)
    part.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(part, folder / MANIFEST)


# ------------------------------------------------------------------------------ checks
def _real(p: Path) -> Path:
    return Path(os.path.realpath(p))


def _probe(folder: Path) -> str | None:
    """``None`` when a file can be created and removed in ``folder``, else the reason."""
    if not os.access(folder, os.W_OK | os.X_OK):
        return "permission denied"
    try:
        fd, name = tempfile.mkstemp(prefix=".composition-jax-probe-", dir=folder)
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        return e.strerror or str(e)
    return None


@dataclass
class Target:
    """A checked output folder. ``exists``: it existed at check time (then the run stages and
    commits inside it); ``previous``: the entries of its manifest (our earlier outputs)."""

    path: Path
    command: str
    force: bool
    exists: bool
    previous: list[str] = field(default_factory=list)
    outputs: frozenset = frozenset()


def check_target(out: str | os.PathLike, *, command: str, force: bool,
                 outputs: Iterable[str] = ()) -> Target:
    """Check ``out`` before any work (see the module docstring for the rules).

    Args:
      out: the output folder.
      command: ``"reproduce"`` or ``"bench"`` (recorded in the manifest).
      force: replace the outputs of a previous run of ``command`` (foreign entries stay).
      outputs: names the run will or may write (for the up-front collision check).

    Raises :class:`OutputExists` (non-empty, no ``force``) or :class:`OutputError`.
    """
    if str(out) == "":
        raise OutputError("the output folder name is empty")
    path = Path(out)
    real = _real(path)
    cwd = _real(Path.cwd())
    if real == Path(real.anchor):
        raise OutputError(f"refusing to write into the root folder {out}; give a dedicated "
                          "output folder")
    if real == cwd or real in cwd.parents:
        raise OutputError(f"refusing to write into {out}: it is the current folder or one of "
                          "its parents; give a dedicated output folder")
    try:
        home = _real(Path.home())
    except (RuntimeError, KeyError):
        home = None
    if home is not None and (real == home or real in home.parents):
        raise OutputError(f"refusing to write into {out}: it is the home folder or one of its "
                          "parents; give a dedicated output folder")
    outputs = frozenset(outputs)
    if os.path.lexists(path):
        if not path.is_dir():
            raise OutputError(f"{out} exists and is not a folder")
        why = _probe(path)
        if why is not None:
            raise OutputError(f"cannot write into {out}: {why}")
        try:
            entries = set(os.listdir(path))
        except OSError as e:
            raise OutputError(f"cannot read {out}: {e.strerror or e}") from None
        if entries and not force:
            raise OutputExists(
                f"output folder {out} exists and is not empty; use --force to replace the "
                f"outputs of a previous `{TOOL} {command}` run (other files are kept)")
        previous = read_manifest(path, command) or []
        foreign = entries - set(previous) - {MANIFEST}
        clash = sorted(foreign & outputs)
        if clash:
            raise OutputError(
                f"{out} holds {', '.join(clash)}, not written by `{TOOL} {command}` (no "
                f"manifest entry); move or remove {'it' if len(clash) == 1 else 'them'}, or "
                "choose another --out")
        return Target(path, command, force, True, previous, outputs)
    # does not exist: the nearest existing ancestor must be a writable folder
    anc = path.absolute().parent
    while not os.path.lexists(anc) and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise OutputError(f"cannot create {out}: {anc} is not a folder")
    why = _probe(anc)
    if why is not None:
        raise OutputError(f"cannot create {out}: cannot write into {anc} ({why})")
    return Target(path, command, force, False, [], outputs)


# ------------------------------------------------------------------------------ staging
def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        p.unlink()


class Staging:
    """A hidden staging folder for one run into a checked :class:`Target`.

    Use as a context manager: write into :attr:`path`, then call :meth:`commit`. Leaving the
    block without a commit (an exception, ``KeyboardInterrupt``, :class:`Terminated`) removes
    the staging folder; the target is untouched. Creating it creates missing parents of the
    target (before any work)."""

    def __init__(self, target: Target):
        self.target = target
        self.committed = False
        out = target.path
        try:
            if target.exists:
                self.path = Path(tempfile.mkdtemp(prefix=_STAGING_INSIDE, dir=out))
            else:
                out.absolute().parent.mkdir(parents=True, exist_ok=True)
                self.path = Path(tempfile.mkdtemp(
                    prefix=f".{out.absolute().name}.composition-jax-tmp-",
                    dir=out.absolute().parent))
        except OSError as e:
            raise OutputError(f"cannot create {out}: {e.strerror or e}") from None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.discard()

    def discard(self) -> None:
        """Remove the staging folder (if still there; a second Ctrl-C waits for it)."""
        if os.path.lexists(self.path):
            with deferred_signals():
                shutil.rmtree(self.path, ignore_errors=True)

    def entries(self) -> list[str]:
        """What the run wrote (top-level names; ``*.part`` files are unfinished writes)."""
        return sorted(n for n in os.listdir(self.path)
                      if not n.endswith(_PART) and n != MANIFEST)

    def commit(self, last: str | None = None) -> list[str]:
        """Move the staged outputs into the target; ``last`` (e.g. ``"report.json"``) arrives
        last and is removed first from the previous outputs. Returns the entries written.
        Raises :class:`OutputError` when a foreign entry has the name of a new output or the
        target changed under the run (the target is then left as it was)."""
        t = self.target
        out = t.path
        new = self.entries()
        with deferred_signals():
            if not t.exists:
                os.chmod(self.path, 0o777 & ~current_umask())
                _write_manifest(self.path, t.command, new)
                try:
                    os.rename(self.path, out)
                except OSError as e:
                    raise OutputError(f"cannot move the finished outputs to {out} (it appeared "
                                      f"during the run?): {e.strerror or e}") from None
            else:
                previous = read_manifest(out, t.command) or []
                present = set(os.listdir(out))
                clash = sorted((set(new) & present) - set(previous))
                if clash:
                    raise OutputError(
                        f"{out} holds {', '.join(clash)}, not written by `{TOOL} {t.command}` "
                        "(no manifest entry); nothing was replaced, move or remove "
                        f"{'it' if len(clash) == 1 else 'them'} and run again")
                # 1. a manifest that covers old and new (an abrupt end leaves nothing unlisted)
                _write_manifest(out, t.command, set(previous) | set(new))
                # 2. the old completion marker first, then the other old outputs
                #    (a file replaced by a file is left to the atomic os.replace of step 3)
                for n in sorted(previous, key=lambda n: n != last):
                    p = out / n
                    if not os.path.lexists(p):
                        continue
                    if (n == last or n not in new or p.is_dir() or p.is_symlink()
                            or (self.path / n).is_dir()):
                        _remove(p)
                # 3. the new outputs, the completion marker last
                for n in sorted(new, key=lambda n: n == last):
                    os.replace(self.path / n, out / n)
                # 4. the final manifest
                _write_manifest(out, t.command, new)
                self.discard()
        self.committed = True
        return new
