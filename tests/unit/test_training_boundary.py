"""The offline `training` package stays out of the online job system, and its own arrows point down.

Online (orchestrator, workers) and model/ never import training, neither at module top nor lazily
inside a function; training imports only model/, the storage layer, the CLI machinery and the Ray
start-up helper of the online packages."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# What training may import from the online packages (module or package prefix).
TRAINING_MAY_USE = ("orchestrator.storage", "orchestrator.cli", "workers.local_ray")


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-local imports included), plus string
    literals handed to `importlib.import_module`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add(node.args[0].value)
    return found


def _files(package: str) -> list[Path]:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no Python files under {package}/"
    return files


def test_online_packages_and_model_never_import_training():
    offenders = {
        str(path.relative_to(ROOT)): sorted(m for m in _imports(path) if m == "training" or m.startswith("training."))
        for package in ("orchestrator", "workers", "model")
        for path in _files(package)
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_training_uses_only_the_allowed_parts_of_the_online_packages():
    used = {
        str(path.relative_to(ROOT)): sorted(
            m
            for m in _imports(path)
            if m.split(".")[0] in ("orchestrator", "workers")
            and not any(m == allowed or m.startswith(allowed + ".") for allowed in TRAINING_MAY_USE)
        )
        for path in _files("training")
    }
    assert {k: v for k, v in used.items() if v} == {}


def test_importing_every_online_module_loads_no_training_module():
    script = (
        "import importlib, pkgutil, sys\n"
        "import orchestrator, workers\n"
        "for pkg in (orchestrator, workers):\n"
        "    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        importlib.import_module(info.name)\n"
        "print(sorted(m for m in sys.modules if m == 'training' or m.startswith('training.')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
