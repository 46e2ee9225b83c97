"""Imports run downward only: inference → annotations → imaging, and imaging knows no Django."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("medannot", "annotations", "inference", "imaging")


def test_the_layers_contract_is_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_function_imports_our_own_packages():
    """An import inside a function that names one of our packages dodges a cycle; only
    heavy third-party libraries (torch, transformers) may be imported late."""
    late = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                for inner in ast.walk(node):
                    names = []
                    if isinstance(inner, ast.ImportFrom) and inner.module and not inner.level:
                        names = [inner.module]
                    elif isinstance(inner, ast.Import):
                        names = [alias.name for alias in inner.names]
                    for name in names:
                        if name.split(".")[0] in PACKAGES:
                            late.append(f"{path.relative_to(ROOT)}:{inner.lineno} {name}")
    assert not late, "imports inside functions:\n" + "\n".join(sorted(set(late)))
