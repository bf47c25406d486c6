"""The test matrix: ``make test-all``, ``make test-latest`` and ``make test-lowest`` run sessions here.

Every session builds its own virtualenv with uv. The supported interpreters are 3.11, 3.12 and 3.13:
by default the newest pyenv-installed patch release of each (``~/.pyenv/versions/3.1x.*``), else a
working ``python3.1x`` on ``PATH``; ``PYTHONS="/path/to/python3.12 /path/to/python3.13"`` overrides
that. Each chosen interpreter is linked into ``.nox/pythons/`` as ``python3.X``, and that folder
goes first on ``PATH``, so nox and uv find exactly these (pyenv's shims for versions that are not
active fail when run). With ``CI`` set, a supported version that is not found is an error.

Sessions:

- ``tests-3.11``, ``tests-3.12``, ``tests-3.13``: the locked dependencies (``requirements/lock.txt``),
  the whole suite; on 3.11 and 3.13 under coverage (line and branch, every process), each held to
  the floor of ``pyproject.toml``;
- ``public``: the suite with the public asyncio path forced (``DWCP_RESILIENCE_PUBLIC_ASYNCIO=1``)
  on the oldest interpreter, where the private paths are otherwise taken;
- ``py314sim``: the suite with asyncio's task table as CPython 3.14 leaves it (empty, and gone from
  ``_asyncio``), set up by ``tests/conftest.py``, on the newest interpreter;
- ``latest``: the newest release of every dependency, unlocked, on the newest interpreter;
- ``lowest``: the lowest versions ``pyproject.toml`` declares for its direct dependencies
  (``uv --resolution lowest-direct``), on the oldest interpreter;
- ``coverage``: combines the data of the ``tests`` sessions run before it and reports per module.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from pathlib import Path

import nox

SUPPORTED = ("3.11", "3.12", "3.13")
EXTRAS = "dev,trio,uvloop,redis,demo"
LOCK = "requirements/lock.txt"
ROOT = Path(__file__).parent
COVERAGE_DIR = ROOT / ".coverage-data"

nox.options.default_venv_backend = "uv"
nox.options.download_python = "never"
nox.options.error_on_missing_interpreters = True
nox.options.sessions = ["tests", "public", "py314sim"]


def _version_of(python: str) -> str | None:
    try:
        out = subprocess.run(
            [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None


def _patch_key(path: str) -> tuple[int, ...]:
    match = re.search(r"versions/(\d+)\.(\d+)\.(\d+)", path)
    return tuple(int(part) for part in match.groups()) if match else (0,)


def _candidates(version: str) -> list[str]:
    pyenv = os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python{version}")
    found = sorted(glob.glob(pyenv), key=_patch_key, reverse=True)
    on_path = shutil.which(f"python{version}")
    return [*found, *([on_path] if on_path else [])]


def _interpreters() -> dict[str, str]:
    """``{"3.11": "/path/to/python3.11", ...}``: the interpreters this run uses."""
    chosen: dict[str, str] = {}
    override = os.environ.get("PYTHONS", "").split()
    if override:
        for python in override:
            version = _version_of(python)
            if version is None:
                raise SystemExit(f"PYTHONS: {python} does not run")
            chosen[version] = python
        return chosen
    for version in SUPPORTED:
        for python in _candidates(version):
            if _version_of(python) == version:
                chosen[version] = python
                break
    missing = [version for version in SUPPORTED if version not in chosen]
    if missing and os.environ.get("CI"):
        raise SystemExit(f"CI: no interpreter found for Python {', '.join(missing)}")
    return chosen


def _expose(interpreters: dict[str, str]) -> None:
    """Link the chosen interpreters into .nox/pythons and put that folder first on PATH."""
    folder = ROOT / ".nox" / "pythons"
    folder.mkdir(parents=True, exist_ok=True)
    for version, python in interpreters.items():
        link = folder / f"python{version}"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.realpath(python))
    os.environ["PATH"] = f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"


INTERPRETERS = _interpreters()
_expose(INTERPRETERS)
VERSIONS = sorted(INTERPRETERS, key=lambda v: tuple(map(int, v.split("."))))
OLDEST, NEWEST = (VERSIONS[0], VERSIONS[-1]) if VERSIONS else ("3.11", "3.11")


def _install_locked(session: nox.Session) -> None:
    session.install("-r", LOCK)
    session.install("--no-deps", "-e", ".")


def _pytest(
    session: nox.Session, *, coverage: bool, skip: tuple[str, ...] = (), **env: str
) -> None:
    args = ["-p", "no:cacheprovider", *skip, *session.posargs]
    if not coverage:
        session.run("python", "-m", "pytest", *args, env=env)
        return
    data = COVERAGE_DIR / session.name.replace("/", "_")
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    env = {**env, "COVERAGE_FILE": str(data / ".coverage")}
    session.run("python", "-m", "coverage", "run", "-m", "pytest", *args, env=env)
    session.run("python", "-m", "coverage", "combine", "-q", env=env)
    session.run("python", "-m", "coverage", "report", "--format=total", env=env)
    session.run("python", "-m", "coverage", "report", "--skip-covered", "--skip-empty", env=env)


_VERSIONS = (
    "import importlib.metadata as m\n"
    "print(' '.join(sorted(f'{d.name}=={d.version}' for d in m.distributions())))"
)


def _show_versions(session: nox.Session) -> None:
    """Print what an unlocked session resolved, so a drift report names the versions."""
    session.run("python", "-c", _VERSIONS)


# Coverage is measured on the oldest and the newest interpreter. The package has one version
# seam (3.11 against 3.12+, `core/_runtime.py`), so 3.12 takes 3.13's paths; and under coverage 3.12
# is the slowest run of the gate (its settrace: 5:53 against 4:44-4:52 for the suite), time CI's
# 30 minutes no longer had once the suite passed 3,000 tests.
COVERED = (OLDEST, NEWEST)


@nox.session(python=VERSIONS)
def tests(session: nox.Session) -> None:
    """The whole suite with the locked dependencies (under coverage on the oldest and newest)."""
    _install_locked(session)
    _pytest(session, coverage=session.python in COVERED)


# The seam sessions (public, py314sim) test asyncio's private-vs-public paths, which every policy
# test drives. They leave out the fleet tests that spend their time in Redis processes (a 6-node
# cluster, failovers, 4 to 12 child processes; about 2 min of each run on 2 cores): those run in
# every tests-3.x session, and CI runs the whole gate inside 30 minutes.
SEAM_SESSION_SKIPS = (
    "--ignore=tests/test_redis_cluster.py",
    "--ignore=tests/test_redis_membership.py",
)


@nox.session(python=OLDEST)
def public(session: nox.Session) -> None:
    """The suite with the public asyncio path forced (no private asyncio name read)."""
    _install_locked(session)
    _pytest(session, coverage=False, skip=SEAM_SESSION_SKIPS, DWCP_RESILIENCE_PUBLIC_ASYNCIO="1")


@nox.session(python=[v for v in VERSIONS[-1:] if v >= "3.12"])
def py314sim(session: nox.Session) -> None:
    """The suite with asyncio's task table as CPython 3.14 leaves it, on the newest interpreter
    (3.12 and 3.13 take the same paths; the simulation needs 3.12+)."""
    _install_locked(session)
    _pytest(session, coverage=False, skip=SEAM_SESSION_SKIPS, DWCP_SIMULATE_PY314="1")


@nox.session(python=NEWEST)
def latest(session: nox.Session) -> None:
    """The newest release of every dependency (no lock): drift shows up here first."""
    session.install("--upgrade", "--resolution", "highest", "-e", f".[{EXTRAS}]")
    _show_versions(session)
    _pytest(session, coverage=False)


@nox.session(python=OLDEST)
def lowest(session: nox.Session) -> None:
    """The lowest versions pyproject.toml declares for every direct dependency."""
    session.install("--resolution", "lowest-direct", "-e", f".[{EXTRAS}]")
    _show_versions(session)
    _pytest(session, coverage=False)


@nox.session(python=OLDEST)
def coverage(session: nox.Session) -> None:
    """Combine the coverage of the tests sessions run so far and report it per module."""
    session.install("-r", LOCK)
    files = sorted(str(path) for path in COVERAGE_DIR.glob("tests-*/.coverage"))
    if not files:
        session.error("no coverage data: run the tests sessions first")
    env = {"COVERAGE_FILE": str(COVERAGE_DIR / ".coverage")}
    session.run("python", "-m", "coverage", "combine", "-q", "--keep", *files, env=env)
    session.run("python", "-m", "coverage", "report", env=env)
