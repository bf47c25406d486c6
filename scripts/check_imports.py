"""Check the package's imports: no cycles between its modules, no undeclared private imports.

Usage: ``python scripts/check_imports.py [--list] [PACKAGE_DIR]`` (default: ``dwcp_resilience``
next to this folder). Standard library only, so it runs on a clean clone before anything is
installed. Exit status 0 when clean, 1 with a report of the errors otherwise; known debt and stale
allowlist entries are printed as warnings and do not fail. ``--list`` also prints every import of a
private module or name that was allowed, and why.

What counts:

- **Cycles.** The graph of imports between the package's modules: ``import a.b``, ``from a import
  b`` and relative imports (resolved); ``from pkg import name`` where ``pkg.name`` is a submodule is
  an import of that submodule, otherwise of ``pkg`` (its ``__init__``). Imports inside a function
  count (a function-local import is how a cycle gets hidden, not removed); imports under ``if
  TYPE_CHECKING:`` do not (cycles through them alone are printed as a note). Every strongly
  connected component of more than one module is a cycle, reported with its edges' ``file:line``.
  A cycle is tolerated while its modules are a subset of an entry of :data:`KNOWN_CYCLES`.
- **Private modules.** A module one of whose names below the package starts with ``_`` (``core/
  _runtime.py``) is private. Any other module that imports it (``from ..core._runtime import
  running``, ``from ..core import _runtime``, ``import pkg.core._runtime``, or ``pkg.core._runtime``
  read as an attribute) needs it in :data:`DECLARED_INTERFACES`; only the modules inside a private
  *package* may import each other freely.
- **Private names.** ``from a.b import _name`` and ``alias._name`` read on a name bound by an
  import of a package module (``from .policies import timeout as _to``; ``_to._LIVE``), from any
  module but ``a.b`` itself, need ``(a.b, _name)`` in :data:`DECLARED_PRIVATE`. Dunder names are
  not private. ``obj._name`` on an instance cannot be told apart with ``ast`` and is not checked.
  Private imports under ``TYPE_CHECKING`` count too: an annotation couples the modules as well.

A violation listed in :data:`KNOWN_DEBT` (by importer, owner module and name: ``""`` for the
private module itself) is a warning instead of an error, until it is fixed and its entry deleted.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "dwcp_resilience"

ISSUE_16 = "being removed: issue 16"

#: Private modules that other modules of the package may import: the package's internal interfaces.
DECLARED_INTERFACES: dict[str, str] = {
    "dwcp_resilience.core._runtime": (
        "the one seam for asyncio internals: running(), current_task(), get_running_loop() "
        "(see its docstring)"
    ),
    "dwcp_resilience.core._fused": (
        "the Admission protocol (WAIT, Admission, admission_of, fuse) by which the breaker, limiter "
        "and bulkhead share one frame with the pipeline and the manager's stack"
    ),
    "dwcp_resilience.policies._park": (
        "park()/wake(): the waiting paths of the rate limiter and the bulkhead"
    ),
    "dwcp_resilience._stack": "the manager's compiled per-operation stack (manager, _lane)",
    "dwcp_resilience._lane": "the manager's one-frame fast lane, built by lane_for() (manager)",
    "dwcp_resilience._metrics": (
        "the metrics implementation: re-exported by dwcp_resilience.prometheus (the public door), "
        "its families table read by the ops dashboard"
    ),
    "dwcp_resilience.redis._backend": (
        "the fleet primitives' guarded Redis connection and fallback tracking"
    ),
    "dwcp_resilience.redis._gcra": "the GCRA Lua script of the Redis rate limiter",
    "dwcp_resilience.redis._budget_core": "the fleet error budget's pure bookkeeping",
    "dwcp_resilience.redis._quorum": (
        "the fleet breaker's pure quorum decision (QuorumShare, count_reports, QuorumFollower)"
    ),
    "dwcp_resilience.redis._breaker_lua": "the fleet breaker's Redis layout and Lua scripts",
    "dwcp_resilience.redis._breaker_types": "the fleet breaker's event and statistics records",
    "dwcp_resilience.redis._budget_lua": "the fleet error budget's Lua scripts (flush, snapshot)",
    "dwcp_resilience.slo._window": "the error budget's pure bucketed sliding windows",
    "dwcp_resilience.dwcp._service": (
        "BackgroundService and accept_forever, shared by the DWCP peer and the chaos proxy"
    ),
}

#: ``(owner module, _name)`` pairs other modules of the package may import or read.
DECLARED_PRIVATE: dict[tuple[str, str], str] = {}

#: ``(importer, owner module, name)`` -> reason: current violations reported as warnings until
#: fixed (``name`` ``""``: importing the private module itself). Delete an entry once it is fixed.
KNOWN_DEBT: dict[tuple[str, str, str], str] = {}

#: Cycles tolerated for now: a cycle whose modules are a subset of an entry is a warning.
KNOWN_CYCLES: list[frozenset[str]] = []


@dataclass(frozen=True)
class Allowlists:
    """What the checker tolerates; :func:`main` uses the module's constants unless given one."""

    interfaces: Mapping[str, str] = field(default_factory=lambda: dict(DECLARED_INTERFACES))
    private: Mapping[tuple[str, str], str] = field(default_factory=lambda: dict(DECLARED_PRIVATE))
    debt: Mapping[tuple[str, str, str], str] = field(default_factory=lambda: dict(KNOWN_DEBT))
    cycles: Sequence[frozenset[str]] = field(default_factory=lambda: list(KNOWN_CYCLES))


@dataclass(frozen=True)
class Import:
    """One import (or attribute read) by ``importer`` of module ``target`` (``name``: ``""``)."""

    importer: str
    target: str
    name: str
    path: Path
    line: int
    local: bool = False
    type_checking: bool = False
    attribute: bool = False


@dataclass(frozen=True)
class Finding:
    """An access to a private module (``name == ""``) or a private name of module ``owner``."""

    site: Import
    owner: str
    name: str

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.site.importer, self.owner, self.name)


@dataclass(frozen=True)
class Cycle:
    """A strongly connected component of the import graph, with the edges inside it."""

    modules: tuple[str, ...]
    edges: tuple[Import, ...]


@dataclass
class Report:
    """What :func:`check` found; ``ok`` when there is nothing but warnings."""

    package: str
    base: Path
    cycles: list[Cycle] = field(default_factory=list)
    tolerated_cycles: list[Cycle] = field(default_factory=list)
    type_checking_cycles: list[Cycle] = field(default_factory=list)
    errors: list[Finding] = field(default_factory=list)
    debt: list[tuple[Finding, str]] = field(default_factory=list)
    allowed: list[tuple[Finding, str]] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.cycles and not self.errors


def is_private(name: str) -> bool:
    """``_x`` and ``__x`` are private; dunders (``__all__``, ``__version__``) are not."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_root(module: str, package: str) -> str | None:
    """The shortest prefix of ``module`` whose last part is private (``None``: a public module)."""
    parts = module.split(".")
    for i in range(len(package.split(".")), len(parts)):
        if is_private(parts[i]):
            return ".".join(parts[: i + 1])
    return None


def discover(package_dir: Path) -> dict[str, Path]:
    """Module name -> file, for every ``.py`` file under ``package_dir`` (a package's is its
    ``__init__.py``)."""
    package = package_dir.name
    modules: dict[str, Path] = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = [package, *path.relative_to(package_dir).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


class _Collector(ast.NodeVisitor):
    """Collects a module's imports of package modules and the names they bind to modules."""

    def __init__(self, module: str, path: Path, package: str, modules: Mapping[str, Path]):
        self.module = module
        self.path = path
        self.package = package
        self.modules = modules
        self.imports: list[Import] = []
        self.bindings: dict[str, str] = {}  # a name bound by an import -> the module it holds
        self._depth = 0  # function nesting
        self._type_checking = 0

    def _in_package(self, name: str) -> bool:
        return name == self.package or name.startswith(self.package + ".")

    def _add(self, node: ast.stmt, target: str, name: str = "") -> None:
        self.imports.append(
            Import(
                self.module,
                target,
                name,
                self.path,
                node.lineno,
                local=self._depth > 0,
                type_checking=self._type_checking > 0,
            )
        )

    def _visit_function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        self._depth += 1
        self.generic_visit(node)
        self._depth -= 1

    visit_FunctionDef = _visit_function
    visit_AsyncFunctionDef = _visit_function
    visit_Lambda = _visit_function

    def visit_If(self, node: ast.If) -> None:
        if not _is_type_checking(node.test):
            self.generic_visit(node)
            return
        self._type_checking += 1
        for stmt in node.body:
            self.visit(stmt)
        self._type_checking -= 1
        for stmt in node.orelse:
            self.visit(stmt)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if not self._in_package(alias.name):
                continue
            target = alias.name
            while target not in self.modules and "." in target:  # a name that is no module
                target = target.rsplit(".", 1)[0]
            if target not in self.modules:
                continue
            self._add(node, target)
            if alias.asname is not None:
                if target == alias.name:
                    self.bindings[alias.asname] = target
            else:  # `import a.b.c` binds `a`
                self.bindings[alias.name.split(".")[0]] = self.package

    def _resolve(self, node: ast.ImportFrom) -> str:
        if node.level == 0:
            return node.module or ""
        parts = self.module.split(".")
        if self.modules[self.module].name != "__init__.py":
            parts.pop()  # a plain module's `.` is its package
        if node.level > 1:
            parts = parts[: len(parts) - (node.level - 1)]
        return ".".join([*parts, node.module] if node.module else parts)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = self._resolve(node)
        if not self._in_package(base) or base not in self.modules:
            return
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            if submodule in self.modules:
                self._add(node, submodule)
                self.bindings[alias.asname or alias.name] = submodule
            elif alias.name == "*":
                self._add(node, base)
            else:
                self._add(node, base, alias.name)


def _attribute_reads(
    tree: ast.Module, module: str, path: Path, modules: Mapping[str, Path], bindings: dict[str, str]
) -> Iterator[Import]:
    """``alias.name`` where ``alias`` holds a package module (through submodules: ``pkg.a.b.c``).

    Yields an import of the submodule when ``name`` is one, else an import of ``name`` from it.
    Bindings are per module, not per scope: a local that shadows an imported module's name would
    be read as that module (none does in the package).
    """

    def module_of(node: ast.expr) -> str | None:
        if isinstance(node, ast.Name):
            return bindings.get(node.id)
        if isinstance(node, ast.Attribute):
            parent = module_of(node.value)
            if parent is not None and f"{parent}.{node.attr}" in modules:
                return f"{parent}.{node.attr}"
        return None

    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        owner = module_of(node.value)
        if owner is None:
            continue
        submodule = f"{owner}.{node.attr}"
        if submodule in modules:
            yield Import(module, submodule, "", path, node.lineno, attribute=True)
        else:
            yield Import(module, owner, node.attr, path, node.lineno, attribute=True)


def collect(package_dir: Path) -> tuple[dict[str, Path], list[Import]]:
    """The package's modules and every import (and module attribute read) between them."""
    package = package_dir.name
    modules = discover(package_dir)
    imports: list[Import] = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        collector = _Collector(module, path, package, modules)
        collector.visit(tree)
        imports.extend(collector.imports)
        imports.extend(_attribute_reads(tree, module, path, modules, collector.bindings))
    return modules, imports


def strongly_connected(nodes: Iterable[str], edges: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative), each sorted; those of 2+ nodes."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in nodes:
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(edges.get(succ, ())))))
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component: list[str] = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return sorted(found)


def find_cycles(modules: Iterable[str], imports: Iterable[Import], *, typing: bool) -> list[Cycle]:
    """Cycles of the import graph (``typing``: with the ``TYPE_CHECKING`` imports too)."""
    sites: dict[tuple[str, str], list[Import]] = {}
    for imp in imports:
        if imp.attribute or imp.importer == imp.target or (imp.type_checking and not typing):
            continue
        sites.setdefault((imp.importer, imp.target), []).append(imp)
    edges: dict[str, set[str]] = {}
    for importer, target in sites:
        edges.setdefault(importer, set()).add(target)
    cycles = []
    for component in strongly_connected(sorted(modules), edges):
        members = set(component)
        inside = [
            imp
            for (importer, target), found in sorted(sites.items())
            if importer in members and target in members
            for imp in found
        ]
        cycles.append(Cycle(tuple(component), tuple(inside)))
    return cycles


def private_accesses(package: str, imports: Iterable[Import]) -> list[Finding]:
    """Every access to another module's private module or private name (one per site)."""
    findings: dict[tuple[str, str, str, Path, int], Finding] = {}
    for imp in imports:
        root = private_root(imp.target, package)
        inside = root is not None and (imp.importer == root or imp.importer.startswith(root + "."))
        # Reading a name of a module object already imported is not a second access to it.
        through_import = imp.attribute and bool(imp.name)
        if root is not None and imp.importer != imp.target and not inside and not through_import:
            finding = Finding(imp, imp.target, "")
            findings.setdefault((*finding.key, imp.path, imp.line), finding)
        if imp.name and is_private(imp.name) and imp.importer != imp.target:
            finding = Finding(imp, imp.target, imp.name)
            findings.setdefault((*finding.key, imp.path, imp.line), finding)
    return sorted(findings.values(), key=lambda f: (str(f.site.path), f.site.line, f.owner, f.name))


def check(package_dir: Path, allow: Allowlists | None = None) -> Report:
    """Check the package at ``package_dir`` (its name is the folder's) against ``allow``."""
    allow = Allowlists() if allow is None else allow
    package_dir = package_dir.resolve()
    package = package_dir.name
    modules, imports = collect(package_dir)
    report = Report(package, package_dir.parent)

    runtime = find_cycles(modules, imports, typing=False)
    for cycle in runtime:
        members = frozenset(cycle.modules)
        known = any(members <= tolerated for tolerated in allow.cycles)
        (report.tolerated_cycles if known else report.cycles).append(cycle)
    runtime_sets = {frozenset(cycle.modules) for cycle in runtime}
    report.type_checking_cycles = [
        cycle
        for cycle in find_cycles(modules, imports, typing=True)
        if frozenset(cycle.modules) not in runtime_sets
    ]

    used_interfaces: set[str] = set()
    used_private: set[tuple[str, str]] = set()
    used_debt: set[tuple[str, str, str]] = set()
    for finding in private_accesses(package, imports):
        if not finding.name and finding.owner in allow.interfaces:
            used_interfaces.add(finding.owner)
            reason = f"declared interface: {allow.interfaces[finding.owner]}"
            report.allowed.append((finding, reason))
        elif finding.name and (finding.owner, finding.name) in allow.private:
            used_private.add((finding.owner, finding.name))
            reason = f"declared private: {allow.private[finding.owner, finding.name]}"
            report.allowed.append((finding, reason))
        elif finding.key in allow.debt:
            used_debt.add(finding.key)
            report.debt.append((finding, allow.debt[finding.key]))
        else:
            report.errors.append(finding)

    def ours(module: str) -> bool:
        return module == package or module.startswith(package + ".")

    for module in sorted(set(allow.interfaces) - used_interfaces):
        if ours(module):
            report.stale.append(f"DECLARED_INTERFACES[{module!r}]: no other module imports it")
    for owner, name in sorted(set(allow.private) - used_private):
        if ours(owner):
            report.stale.append(f"DECLARED_PRIVATE[{(owner, name)!r}]: no other module uses it")
    for key in sorted(set(allow.debt) - used_debt):
        if ours(key[1]):
            report.stale.append(f"KNOWN_DEBT[{key!r}]: no longer found; delete the entry")
    for tolerated in allow.cycles:
        if any(ours(m) for m in tolerated) and not any(m <= tolerated for m in runtime_sets):
            listed = ", ".join(sorted(tolerated))
            report.stale.append(f"KNOWN_CYCLES {{{listed}}}: no longer found; delete the entry")
    return report


def _where(site: Import, base: Path) -> str:
    try:
        path = site.path.relative_to(base)
    except ValueError:
        path = site.path
    flags = [
        flag
        for flag, on in (
            ("function-local", site.local),
            ("TYPE_CHECKING", site.type_checking),
            ("attribute read", site.attribute),
        )
        if on
    ]
    return f"{path}:{site.line}" + (f" ({', '.join(flags)})" if flags else "")


def _describe(finding: Finding, base: Path) -> str:
    site = finding.site
    if finding.name:
        what = f"private name {finding.owner}.{finding.name}"
    else:
        what = f"private module {finding.owner}"
    return f"{_where(site, base)}: {site.importer} uses {what}"


def _print_cycle(cycle: Cycle, base: Path, out: TextIO) -> None:
    print(f"  {' <-> '.join(cycle.modules)}", file=out)
    for edge in cycle.edges:
        print(f"    {edge.importer} -> {edge.target}  {_where(edge, base)}", file=out)


def render(report: Report, out: TextIO, *, listing: bool = False) -> None:
    """Print ``report``: errors, then warnings, notes, (``listing``) what was allowed, a summary."""
    base = report.base
    if report.cycles:
        print(f"ERROR: import cycles in {report.package}:", file=out)
        for cycle in report.cycles:
            _print_cycle(cycle, base, out)
    if report.errors:
        print(
            "ERROR: undeclared private imports (declare the module in DECLARED_INTERFACES, the "
            "name in DECLARED_PRIVATE, or use a public name):",
            file=out,
        )
        for finding in report.errors:
            print(f"  {_describe(finding, base)}", file=out)
    if report.tolerated_cycles:
        print("warning: known import cycles (KNOWN_CYCLES):", file=out)
        for cycle in report.tolerated_cycles:
            _print_cycle(cycle, base, out)
    if report.debt:
        print("warning: known private imports (KNOWN_DEBT):", file=out)
        for finding, reason in report.debt:
            print(f"  {_describe(finding, base)} [{reason}]", file=out)
    if report.stale:
        print("warning: allowlist entries that match nothing:", file=out)
        for entry in report.stale:
            print(f"  {entry}", file=out)
    if report.type_checking_cycles:
        print("note: cycles only through `if TYPE_CHECKING:` imports (not counted):", file=out)
        for cycle in report.type_checking_cycles:
            _print_cycle(cycle, base, out)
    if listing:
        print("allowed private imports:", file=out)
        for finding, reason in report.allowed:
            print(f"  {_describe(finding, base)}: {reason}", file=out)
        for finding, reason in report.debt:
            print(f"  {_describe(finding, base)}: known debt, {reason}", file=out)
    print(
        f"{report.package}: {len(report.cycles)} cycles, {len(report.errors)} undeclared private "
        f"imports; {len(report.tolerated_cycles)} known cycles, {len(report.debt)} known-debt "
        f"imports, {len(report.allowed)} declared ones allowed",
        file=out,
    )


def main(
    argv: Sequence[str] | None = None,
    *,
    package_dir: Path | None = None,
    allow: Allowlists | None = None,
    out: TextIO | None = None,
) -> int:
    """Check a package (``package_dir``, or the command line's, or dwcp_resilience): 0 when clean,
    1 on a cycle or an undeclared private import, 2 when there is no such package."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    parser.add_argument("package_dir", nargs="?", type=Path, help="the package's folder")
    parser.add_argument(
        "--list", action="store_true", help="also print every allowed private import and why"
    )
    args = parser.parse_args(argv)
    out = sys.stdout if out is None else out
    chosen: Path = args.package_dir or package_dir or PACKAGE_DIR
    if not (chosen / "__init__.py").is_file():
        print(f"error: {chosen} is not a package (no __init__.py)", file=sys.stderr)
        return 2
    report = check(chosen, allow)
    render(report, out, listing=args.list)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
