"""The import graph shows the design: cli -> pipelines -> ddmops, an imaging library that knows
nothing of the MLOps wing (ddmops/ops) but the Tracker protocol, no circles, stages that do not
import each other, and operators that know their family (no dict keys sniffed)."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

from tests.conftest import REPO

PACKAGES = ("ddmops", "pipelines", "cli")
STAGE_MODULES = {"prepare", "degrade", "train_prior", "learn_operator", "invert", "evaluate", "restore"}
THIRD_PARTY_MLOPS = ("mlflow", "optuna", "dvc")


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Every module ``name`` imports, at any depth of its code (lazy imports count too)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known}
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports(path, name, known) for name, path in mods.items()}


def is_imaging(module: str) -> bool:
    return module.startswith("ddmops") and not module.startswith("ddmops.ops") and module != "ddmops.registry"


def test_no_import_circles():
    g = graph()
    project = {m: {d for d in deps if d in g and d != m} for m, deps in g.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for d in sorted(project[m]):
            if state.get(d) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(d):] + [d]))
            if d not in state:
                visit(d)
        path.pop()
        state[m] = 2

    for m in sorted(project):
        if m not in state:
            visit(m)


def test_the_imaging_library_knows_nothing_of_the_mlops_wing():
    offending = {m: sorted(d for d in deps if d.startswith("ddmops.ops") or d.split(".")[0] in THIRD_PARTY_MLOPS)
                 for m, deps in graph().items() if is_imaging(m)}
    assert {m: d for m, d in offending.items() if d} == {}


def test_dependencies_point_one_way():
    g = graph()
    assert {m for m, deps in g.items() if m.startswith("ddmops") and any(d.split(".")[0] in ("pipelines", "cli")
                                                                          for d in deps)} == set()
    assert {m for m, deps in g.items() if m.startswith("pipelines") and any(d.startswith("cli") for d in deps)} == set()
    assert {m for m, deps in g.items() if m.split(".")[0] == "ddmops"
            and any(d.split(".")[0] == "mlflow" for d in deps)} <= {m for m in g if m.startswith("ddmops.ops")}


def test_stages_do_not_import_each_other():
    g = graph()
    stages = {f"pipelines.{s}" for s in STAGE_MODULES}
    assert {s: sorted(d for d in g[s] if d in stages and d != s) for s in stages
            if any(d in stages and d != s for d in g[s])} == {}


def test_no_code_sniffs_dict_keys_for_an_operators_family():
    pattern = re.compile(r"[\"'] in arrays\b")
    hits = [f"{p}:{i}" for p in modules().values() for i, line in enumerate(p.read_text().splitlines(), 1)
            if pattern.search(line)]
    assert hits == []


def test_the_checks_see_a_circle_and_a_wing_import(tmp_path, monkeypatch):
    """The graph is read right: a lazy import is an import, and a planted circle is found."""
    fake = {"ddmops.a": tmp_path / "a.py", "ddmops.b": tmp_path / "b.py"}
    fake["ddmops.a"].write_text("def f():\n    from ddmops.b import g\n")
    fake["ddmops.b"].write_text("from ddmops.a import f\nimport mlflow\n")
    monkeypatch.setattr(sys.modules[__name__], "modules", lambda: fake)
    g = graph()
    assert "ddmops.b" in g["ddmops.a"] and "mlflow" in g["ddmops.b"]
    try:
        test_no_import_circles()
    except AssertionError as exc:
        assert "ddmops.a -> ddmops.b -> ddmops.a" in str(exc)
    else:
        raise AssertionError("the planted circle was not found")
