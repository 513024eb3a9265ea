"""The layout keeps its promises: imports point one way (style.md)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_adapters_use_only_the_contract_module_of_the_daemon() -> None:
    for path in sorted((ROOT / "adapters").glob("*.py")):
        engine = {m for m in _imports(path) if m == "daemon" or m.startswith("daemon.")}
        assert engine <= {"daemon.contract"}, f"{path.name} imports {sorted(engine)}"


def test_only_the_composition_root_knows_the_adapter_registry() -> None:
    allowed = {"cli.py", "demo.py"}
    for path in sorted((ROOT / "daemon").rglob("*.py")):
        if path.name in allowed or "simulator" in path.parts:
            continue
        adapters = {m for m in _imports(path) if m == "adapters" or m.startswith("adapters.")}
        assert not adapters, f"{path.relative_to(ROOT)} imports {sorted(adapters)}"


def test_the_store_backend_is_reached_only_through_the_store_package() -> None:
    for path in sorted((ROOT / "daemon").rglob("*.py")):
        if "store" in path.parts:
            continue
        inner = {m for m in _imports(path) if m.startswith("daemon.store.")}
        assert not inner, f"{path.relative_to(ROOT)} imports {sorted(inner)}"
