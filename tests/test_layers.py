"""The package's floors (docs/architecture.md): import-linter's contract holds, no import inside a
function dodges it without a stated reason, and no module grows into a hub."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "avgen"

# Imports inside functions, each with why it is not at the top of its module. Anything else found
# inside a function fails the test: move it to the top, or add it here with its reason.
LAZY_IMPORTS = {
    # subcommand modules load torch, diffusers, gradio and PyAV only when a command runs, so that
    # building the parser (`avgen --help`) stays fast (avgen/cli/__init__.py)
    "avgen/cli/*": "start-up time of `avgen --help`",
    # package versions are recorded by every layer; this module sits below them all
    "avgen/util.py": "util is imported everywhere; torch, diffusers and torchaudio by few of its users",
    # matplotlib takes about a second to import and most users of clips draw nothing
    "avgen/data/preview.py": "matplotlib only when a figure is drawn",
}


def function_level_imports() -> list[tuple[str, int, str]]:
    """(file, line, imported module) of every import statement inside a function."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.Import):
                    found += [(str(path.relative_to(PACKAGE.parent)), node.lineno, a.name) for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    found.append((str(path.relative_to(PACKAGE.parent)), node.lineno, node.module or "."))
    return found


def allowed(file: str) -> bool:
    return any(file == key or (key.endswith("/*") and file.startswith(key[:-1])) for key in LAZY_IMPORTS)


def test_the_layer_contract_holds():
    lint = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent)}
    done = subprocess.run([str(lint), "--config", str(PACKAGE.parent / "pyproject.toml"), "--no-cache"],
                          cwd=PACKAGE.parent, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "1 kept, 0 broken" in done.stdout


def test_no_import_inside_a_function_without_a_stated_reason():
    unexplained = [f"{file}:{line} imports {module}" for file, line, module in function_level_imports()
                   if not allowed(file)]
    assert not unexplained, "\n".join(unexplained)


def test_the_allowed_lazy_imports_are_still_needed():
    """An entry for a file that imports nothing inside a function any more is stale."""
    files = {file for file, _, _ in function_level_imports()}
    stale = [key for key in LAZY_IMPORTS if not any(allowed(f) and (f == key or f.startswith(key[:-1]))
                                                    for f in files)]
    assert not stale, stale


def test_no_module_is_a_hub():
    """About 400 lines at most: a bigger file holds more than one job (split it by job)."""
    big = {str(p.relative_to(PACKAGE.parent)): n for p in PACKAGE.rglob("*.py")
           if (n := len(p.read_text().splitlines())) > 420}
    assert not big, big
