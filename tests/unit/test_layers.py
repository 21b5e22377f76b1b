"""The import contract: tsmr's packages import downward only (docs/architecture.md, "Layers").

Every ``import`` and ``from ... import`` in ``src/tsmr`` is found with :mod:`ast`,
at the top of a module and inside functions alike (a function-local import is
still a dependency), and checked against :data:`LAYERS`:

* a module may import its own component (the first name under ``tsmr``), and any
  component of a lower layer;
* it may import another component of its own layer unless that layer's
  components are independent of each other;
* nothing imports the root package ``tsmr`` itself (its ``__init__`` is the facade
  on top, which may import anything), and every component has a layer.

The last tests show that the check fails: they add an upward import to a copy of
the tree and expect it reported.
"""

from __future__ import annotations

import ast
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "tsmr"

# Lowest first: (components, whether they are independent of each other).
LAYERS: list[tuple[tuple[str, ...], bool]] = [
    (("errors", "version"), False),
    (("algorithms", "registers", "events", "jsonvalue", "safefs", "findings", "lru"), False),
    (("formats", "backends"), True),
    (("replay", "quirks", "eventlog", "convert", "runtime_log", "predict"), False),
    (("evidence",), False),  # pure: bytes and parameters in, values out
    (("system",), False),  # what reads configfs, devices (through backends), files and the environment
    (("appraisal",), False),
    (("service", "agent"), True),
    (("cli",), False),
]
# Programs and the facade: nothing imports them, so they may import anything.
TOP = {"tsmr", "tsmr.__main__"}

LAYER_OF = {name: n for n, (names, _) in enumerate(LAYERS) for name in names}
INDEPENDENT = {name for names, independent in LAYERS if independent for name in names}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, e.g. tsmr.evidence.bundle
    target: str  # the imported module, e.g. tsmr.replay (tsmr for the root package)
    line: int
    local: bool  # inside a function or class body

    def __str__(self) -> str:
        where = "function-local " if self.local else ""
        return f"{self.module}:{self.line} {where}import of {self.target}"


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(root: Path) -> list[Import]:
    """Every import of a ``tsmr`` module in the package at ``root`` (a ``.../tsmr`` directory)."""
    modules = {_module_name(p, root): p for p in root.rglob("*.py")}
    found: list[Import] = []
    for name, path in sorted(modules.items()):
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(), str(path))
        top = {id(node) for node in tree.body}
        # Imports under `if` / `try` at module level are still top-level.
        for node in tree.body:
            if isinstance(node, (ast.If, ast.Try)):
                top.update(id(n) for n in ast.walk(node))
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    origin = ".".join(base + ([node.module] if node.module else []))
                else:
                    origin = node.module or ""
                # `from X import y` imports X.y when that is a module, else X itself.
                targets = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in modules else origin for a in node.names]
            for target in targets:
                if target == "tsmr" or target.startswith("tsmr."):
                    found.append(Import(name, target, node.lineno, id(node) not in top))
    return found


def _component(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def violations(root: Path) -> list[str]:
    """What breaks the contract in the package at ``root``, one line each."""
    out: list[str] = []
    for imp in imports(root):
        if imp.module in TOP:
            continue
        source, target = _component(imp.module), _component(imp.target)
        if target is None:
            out.append(f"{imp}: nothing may import the root package; import from the module that defines the name")
            continue
        for comp in (source, target):
            if comp not in LAYER_OF:
                out.append(f"{imp}: {comp} has no layer in the contract")
        if source not in LAYER_OF or target not in LAYER_OF or source == target:
            continue
        if LAYER_OF[target] > LAYER_OF[source]:
            out.append(f"{imp}: {source} (layer {LAYER_OF[source] + 1}) imports {target} "
                       f"(layer {LAYER_OF[target] + 1}), which is above it")
        elif LAYER_OF[target] == LAYER_OF[source] and source in INDEPENDENT:
            out.append(f"{imp}: {source} and {target} are independent of each other")
    return sorted(set(out))


def test_the_layers_hold() -> None:
    assert violations(SRC) == []


def test_every_component_has_a_layer() -> None:
    components = {p.stem if p.is_file() else p.name for p in SRC.iterdir()
                  if (p.suffix == ".py" or (p / "__init__.py").exists()) and p.name != "__pycache__"}
    components -= {"__init__", "__main__"}
    assert sorted(components - set(LAYER_OF)) == []


def test_the_scan_sees_function_local_and_relative_imports() -> None:
    found = {(i.module, i.target, i.local) for i in imports(SRC)}
    # A function-local import (the TPM verifier, loaded when a TPM quote is verified).
    assert ("tsmr.evidence.verification", "tsmr.evidence.tpm", True) in found
    # `from . import x` names the module x.
    assert ("tsmr.cli.common", "tsmr.cli.render", False) in found


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "tsmr"
    shutil.copytree(SRC, root, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


@pytest.mark.parametrize(("module", "code", "expected"), [
    # An upward import hidden in a function: the verifiers must not reach for the command line.
    ("evidence/verification.py", "\n\ndef _hidden():\n    from ..cli import render\n",
     "tsmr.evidence.verification:{line} function-local import of tsmr.cli.render: evidence (layer 5) imports cli"),
    # A codec that reads the environment through the layer above.
    ("formats/ccel.py", "\nimport tsmr.system.inputs\n",
     "tsmr.formats.ccel:{line} import of tsmr.system.inputs: formats (layer 3) imports system"),
    # Codecs and backends are independent.
    ("backends/sysfs.py", "\nfrom ..formats import tcg2\n",
     "tsmr.backends.sysfs:{line} import of tsmr.formats.tcg2: backends and formats are independent"),
    # The root package is the facade on top.
    ("runtime_log/records.py", "\nfrom .. import HashAlg\n",
     "tsmr.runtime_log.records:{line} import of tsmr: nothing may import the root package"),
])
def test_an_added_upward_import_is_reported(tmp_path: Path, module: str, code: str, expected: str) -> None:
    root = _copy(tmp_path)
    assert violations(root) == []
    path = root / module
    line = len(path.read_text().splitlines()) + code.count("\n")
    _append(path, code)
    found = violations(root)
    assert len(found) == 1 and found[0].startswith(expected.format(line=line)), found


def test_a_new_package_must_be_given_a_layer(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    (root / "plugins").mkdir()
    (root / "plugins" / "__init__.py").write_text("from ..errors import TsmrError\n")
    assert violations(root) == ["tsmr.plugins:1 import of tsmr.errors: plugins has no layer in the contract"]


def cycles(root: Path) -> list[list[str]]:
    """The import cycles among the modules at ``root`` (strongly connected groups of two or more)."""
    graph: dict[str, set[str]] = {}
    for imp in imports(root):
        if imp.module not in TOP:
            graph.setdefault(imp.module, set()).add(imp.target)
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        order[v] = low[v] = len(order)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in order:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], order[w])
        if low[v] == order[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in order:
            visit(v)
    return sorted(found)


def test_no_module_imports_itself_through_others() -> None:
    """Within a layer too, modules form no cycle (a function-local import would only hide one)."""
    assert cycles(SRC) == []


def test_an_added_cycle_is_reported(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    # replay applies quirks; quirks reaching back for replay is allowed by the layers (same
    # layer) but closes a loop, which the cycle check reports
    _append(root / "quirks.py", "\n\ndef _hidden():\n    from . import replay\n")
    assert violations(root) == []
    assert cycles(root) == [["tsmr.quirks", "tsmr.replay"]]
