"""scripts/check_imports.py: no import cycles and no undeclared private imports in the package.

The script is loaded from its path (``scripts/`` is no package); a synthetic package in
``tmp_path`` shows that it does catch a cycle and each kind of private import.
"""

from __future__ import annotations

import importlib.util
import io
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "check_imports.py"


@pytest.fixture(scope="module")
def checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_imports", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def run(checker: ModuleType, *args: str, **kwargs: object) -> tuple[int, str]:
    out = io.StringIO()
    status = checker.main(list(args), out=out, **kwargs)
    assert isinstance(status, int)
    return status, out.getvalue()


def test_package_has_no_cycles_or_undeclared_private_imports(checker: ModuleType) -> None:
    report = checker.check(checker.PACKAGE_DIR)
    assert report.package == "dwcp_resilience"
    assert [c.modules for c in report.cycles] == []
    assert [checker._describe(f, report.base) for f in report.errors] == []
    # Issue 16 removed the last cycle and undeclared private import: nothing is tolerated now,
    # and every declaration is still used (a stale one would hide the next violation).
    assert (checker.KNOWN_DEBT, checker.KNOWN_CYCLES) == ({}, [])
    assert report.stale == []
    status, out = run(checker)
    assert status == 0, out


def test_allowlists_are_well_formed(checker: ModuleType) -> None:
    modules = checker.discover(checker.PACKAGE_DIR)
    package = checker.PACKAGE_DIR.name
    for module, reason in checker.DECLARED_INTERFACES.items():
        assert checker.private_root(module, package) is not None, module
        assert reason.strip(), module
    for (owner, name), reason in checker.DECLARED_PRIVATE.items():
        assert checker.is_private(name), (owner, name)
        assert reason.strip(), (owner, name)
    for (importer, owner, name), reason in checker.KNOWN_DEBT.items():
        assert name == "" or checker.is_private(name), (importer, owner, name)
        assert reason == checker.ISSUE_16, (importer, owner, name)
    for cycle in checker.KNOWN_CYCLES:
        assert len(cycle) > 1, cycle
    # An entry naming a module that is gone is stale; the package keeps only modules it has.
    named = set(checker.DECLARED_INTERFACES) | {owner for owner, _ in checker.DECLARED_PRIVATE}
    named |= {m for key in checker.KNOWN_DEBT for m in key[:2]}
    assert named <= set(modules), named - set(modules)


def test_runs_standalone_with_the_standard_library_only() -> None:
    # -S: no site-packages, as on a clean clone before anything is installed.
    proc = subprocess.run(
        [sys.executable, "-S", str(SCRIPT), "--list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "allowed private imports:" in proc.stdout
    assert "dwcp_resilience.core._runtime: declared interface" in proc.stdout


SYNTHETIC = {
    "__init__.py": "",
    # a <-> b, the way back hidden in a function.
    "a.py": "from . import b\n",
    "b.py": """
        def later() -> object:
            from .a import b
            return b
    """,
    # c <-> d only through TYPE_CHECKING: not a cycle.
    "c.py": """
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            from .d import D
        class C: ...
    """,
    "d.py": """
        from .c import C
        class D(C): ...
        _hidden = 1
        _other = 2
        _third = 3
    """,
    "_priv.py": "def helper() -> None: ...\n",
    "sub/__init__.py": "from .. import d as dd\nVALUE = dd._third\n",
    "sub/_inner.py": "X = 1\n",
    "sub/user.py": "from ._inner import X\n",  # a sibling needs the declaration too
    # Inside a private package, its modules import each other freely.
    "_impl/__init__.py": "",
    "_impl/x.py": "from .y import Y\nfrom . import y\n",
    "_impl/y.py": "Y = 1\n",
    "e.py": """
        import synth.d
        from ._priv import helper
        from .d import _hidden
        from . import d as dd
        from .sub import _inner

        def f() -> object:
            return dd._other, synth.d.__name__, synth.d._hidden, _inner.X
    """,
}


@pytest.fixture
def synth(tmp_path: Path) -> Path:
    root = tmp_path / "synth"
    for name, text in SYNTHETIC.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return root


def test_catches_a_cycle_and_private_imports(checker: ModuleType, synth: Path) -> None:
    report = checker.check(synth, checker.Allowlists({}, {}, {}, []))
    assert [c.modules for c in report.cycles] == [("synth.a", "synth.b")]
    edges = {(e.importer, e.target, e.line, e.local) for e in report.cycles[0].edges}
    assert edges == {("synth.a", "synth.b", 1, False), ("synth.b", "synth.a", 2, True)}
    assert [c.modules for c in report.type_checking_cycles] == [("synth.c", "synth.d")]
    found = {(f.site.importer, f.owner, f.name, f.site.line) for f in report.errors}
    assert found == {
        ("synth.e", "synth._priv", "", 2),  # a private module
        ("synth.e", "synth.d", "_hidden", 3),  # a private name
        ("synth.e", "synth.sub._inner", "", 5),  # a private submodule, `from pkg import _mod`
        ("synth.e", "synth.d", "_other", 8),  # through an alias of the module
        ("synth.e", "synth.d", "_hidden", 8),  # through `import pkg.mod`
        ("synth.sub", "synth.d", "_third", 2),  # from a package's __init__, `..`
        ("synth.sub.user", "synth.sub._inner", "", 1),
    }
    assert not report.ok

    status, out = run(checker, str(synth), allow=checker.Allowlists({}, {}, {}, []))
    assert status == 1
    assert "ERROR: import cycles" in out
    assert "synth.b -> synth.a  synth/b.py:2 (function-local)" in out
    assert "synth/e.py:3: synth.e uses private name synth.d._hidden" in out
    assert "synth/e.py:8 (attribute read): synth.e uses private name synth.d._other" in out


def test_declarations_and_known_debt_make_it_pass(checker: ModuleType, synth: Path) -> None:
    allow = checker.Allowlists(
        interfaces={"synth._priv": "helpers", "synth.sub._inner": "X", "synth._gone": "stale"},
        private={("synth.d", "_hidden"): "declared"},
        debt={
            ("synth.e", "synth.d", "_other"): "being removed: issue 16",
            ("synth.sub", "synth.d", "_third"): "being removed: issue 16",
        },
        cycles=[frozenset({"synth.a", "synth.b", "synth.c"})],
    )
    status, out = run(checker, "--list", str(synth), allow=allow)
    assert status == 0, out
    assert "warning: known import cycles (KNOWN_CYCLES):" in out
    assert "synth.e uses private name synth.d._other [being removed: issue 16]" in out
    assert "DECLARED_INTERFACES['synth._gone']: no other module imports it" in out
    assert "synth.e uses private module synth._priv: declared interface: helpers" in out
    assert "synth.e uses private name synth.d._hidden: declared private: declared" in out

    # Debt is per importer: the same private name read by another module is still an error.
    (synth / "f.py").write_text("from .d import _other\n", encoding="utf-8")
    report = checker.check(synth, allow)
    assert [(f.site.importer, f.name) for f in report.errors] == [("synth.f", "_other")]


def test_not_a_package(checker: ModuleType, tmp_path: Path) -> None:
    assert run(checker, str(tmp_path))[0] == 2
