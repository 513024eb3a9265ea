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


#: daemon's packages from the bottom up: each may import those before it, never one after it
#: (the README's Developing section draws the same order)
STAGES = (
    "core",
    "simulator",
    "rules",
    "config",
    "store",
    "send",
    "reconcile",
    "keycrm",
    "replicas",
    "pipeline",
    "shell",
    "commands",
)


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "daemon" and parts[1] in STAGES else None


def test_every_module_of_daemon_is_in_a_stage() -> None:
    top = {p.name for p in (ROOT / "daemon").iterdir() if not p.name.startswith("__")}
    assert top - {f"{s}" for s in STAGES} == {"contract.py"}, "daemon/ holds packages only"


def test_imports_point_down_the_stages() -> None:
    for stage in STAGES:
        for path in sorted((ROOT / "daemon" / stage).rglob("*.py")):
            for module in _imports(path):
                used = _stage(module)
                if used is None or used == stage:
                    continue
                assert STAGES.index(used) < STAGES.index(stage), (
                    f"{path.relative_to(ROOT)} ({stage}) imports {module} ({used}), a later stage"
                )


def test_the_store_backend_is_reached_only_through_the_store_package() -> None:
    """Outside `store/`, only the PostgreSQL pieces replicas coordinate through (connections,
    the lease, the shared queue and budget) are imported by path; the backends never."""
    for path in sorted((ROOT / "daemon").rglob("*.py")):
        if "store" in path.parts:
            continue
        inner = {
            m
            for m in _imports(path)
            if m.startswith("daemon.store.")
            and not (m == "daemon.store.pg" or m.startswith("daemon.store.pg."))
        }
        inner |= {m for m in _imports(path) if m == "daemon.store.pg.backend"}
        assert not inner, f"{path.relative_to(ROOT)} imports {sorted(inner)}"
