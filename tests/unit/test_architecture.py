"""The package map in docs/architecture.md holds: layers import only downward, serving and
components never import Airflow, and production files and functions stay small."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = [
    ("components.settings", "components.errors"),
    ("components.data",),
    ("components.feedback",),
    ("components.ingest",),
    ("components.validation",),
    ("components.embed",),
    ("components.evaluation",),
    ("components.models",),
    ("components.engine",),
    ("components.registry",),
    ("components.training",),
    ("components.privacy",),
    ("components.experiments",),
    (
        "components.pipeline",
        "components.cli",
        "components.cli_operator",
        "components.cli_privacy",
        "components.cli_experiments",
        "components.operations",
    ),
    ("serving",),
]
"""Lowest first; a module may import its own package and anything in an earlier layer..."""
BASE = {"components.settings", "components.errors"}
ALLOWED = {
    "components.data": BASE,
    "components.feedback": BASE | {"components.data"},
    "components.ingest": BASE | {"components.data", "components.feedback"},
    "components.validation": BASE | {"components.data"},
    "components.embed": BASE | {"components.data"},
    "components.evaluation": BASE | {"components.data"},
    "components.models": BASE | {"components.data", "components.embed", "components.evaluation"},
}
"""...except these, which may import only the packages named (docs/architecture.md's map)."""
PRODUCTION = ["components", "serving", "dags", "data_checks"]
MAX_FILE_LINES, MAX_FUNCTION_LINES = 450, 80


def _layer(module: str) -> int | None:
    for rank, packages in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in packages):
            return rank
    return None


def _package(module: str) -> str:
    for packages in LAYERS:
        for p in packages:
            if module == p or module.startswith(p + "."):
                return p
    return module


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.AST) -> list[tuple[str, int]]:
    """(module, line) of every import, at any depth, outside ``if TYPE_CHECKING:`` blocks."""
    found, skip = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
            found += [
                (f"{node.module}.{alias.name}", node.lineno) for alias in node.names if node.module == "components"
            ]
    return found


def _python_files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def test_layers_import_only_downward():
    wrong = []
    for path in _python_files("components", "serving"):
        importer = _module_name(path)
        if importer == "components":
            continue
        own = _layer(importer)
        assert own is not None, f"{importer} is in no layer: add its package to LAYERS and docs/architecture.md"
        for module, line in _imports(ast.parse(path.read_text())):
            rank, package, own_package = _layer(module), _package(module), _package(importer)
            if rank is None or package == own_package:
                continue
            if rank > own:
                wrong.append(f"{path.relative_to(ROOT)}:{line} ({importer}) imports {module}, a higher layer")
            elif own_package in ALLOWED and package not in ALLOWED[own_package]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} ({importer}) imports {module}, not in its map line")
    assert not wrong, "\n".join(wrong)


def test_no_airflow_outside_the_dag_files():
    offenders = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in _python_files("components", "serving", "data_checks")
        for module, line in _imports(ast.parse(path.read_text()))
        if module.split(".")[0] == "airflow"
    ]
    assert not offenders, offenders


def test_dev_tools_are_not_part_of_the_installed_package():
    import tomllib

    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    assert not any(pattern.startswith(("devtools", "benchmarks", "tests")) for pattern in include)
    for path in _python_files("components", "serving"):
        modules = {m.split(".")[0] for m, _ in _imports(ast.parse(path.read_text()))}
        assert not modules & {"devtools", "benchmarks", "tests"}, path


@pytest.mark.parametrize("folder", PRODUCTION)
def test_production_files_and_functions_are_small(folder):
    too_long = []
    for path in _python_files(folder):
        text = path.read_text()
        if text.count("\n") > MAX_FILE_LINES:
            too_long.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}() is {length} lines")
    assert not too_long, "\n".join(too_long)


def test_readme_and_architecture_map_match_the_tree():

    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## What is where") :].split("\n## ", 1)[0]
    named = set(re.findall(r"^\| `([\w-]+)/` \|", table, flags=re.M))
    tracked = {p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / "..").exists()}
    tracked -= {"shared", "lm_recsys.egg-info", "__pycache__"}
    tracked = {name for name in tracked if any((ROOT / name).rglob("*.*"))}
    assert named == tracked, f"README table names {sorted(named)}, the tree has {sorted(tracked)}"
    components_row = next(line for line in table.splitlines() if line.startswith("| `components/`"))
    architecture = (ROOT / "docs" / "architecture.md").read_text()
    for package in sorted(p.name for p in (ROOT / "components").iterdir() if (p / "__init__.py").exists()):
        assert f"`{package}/`" in components_row, f"README's components row misses {package}/"
        assert f"`components/{package}/`" in architecture, f"docs/architecture.md's map misses components/{package}/"


def test_tests_and_benchmarks_need_no_path_tricks():
    """The project is importable as installed: no sys.path edits; benchmarks run as modules."""
    offenders = [
        str(path.relative_to(ROOT))
        for path in _python_files("tests", "benchmarks", "components", "serving", "devtools", "dags")
        if path != Path(__file__).resolve() and re.search(r"sys\.path\.(insert|append)", path.read_text())
    ]
    assert not offenders, offenders
    for path in _python_files("benchmarks"):
        if path.name in ("__init__.py", "common.py"):
            continue
        tree = ast.parse(path.read_text())
        assert any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body), f"{path.name} has no main()"


def test_the_service_module_is_only_the_class_and_its_endpoints():
    service = (ROOT / "serving" / "service.py").read_text()
    assert service.count("\n") <= 300
    tree = ast.parse(service)
    classes = [node.name for node in tree.body if isinstance(node, ast.ClassDef)]
    assert classes == ["RecommenderService"], classes
