"""The structure, checked by tools rather than by review: import layers, short functions in assets/
and resources/, module names, and no work done at import time."""

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

from pipelines.settings import REPO_ROOT

PACKAGES = ("assets", "data_checks", "pipelines", "resources")
# Longest function (def line to last line, decorators not counted) in assets/ and resources/, where
# code should read as glue or as one resource's job.
MAX_FUNCTION_LINES = 50
VAGUE_NAMES = {"utils", "util", "helpers", "helper", "misc", "common", "lib"}


def modules(package: str) -> list[Path]:
    return sorted((REPO_ROOT / package).rglob("*.py"))


def test_import_contracts_hold():
    """`lint-imports` (import-linter) checks the layers written down in pyproject.toml."""
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint)], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_every_asset_module_is_named_in_the_independence_contract():
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (independence,) = [c for c in config if c["type"] == "independence"]
    asset_modules = {f"assets.{p.stem}" for p in (REPO_ROOT / "assets").glob("*.py") if p.stem != "__init__"}
    assert set(independence["modules"]) == asset_modules, "a new asset file must join the contract"


def test_functions_in_assets_and_resources_stay_short():
    long = []
    for package in ("assets", "resources"):
        for path in modules(package):
            for node in ast.walk(ast.parse(path.read_text())):
                function = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                if function and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno} {node.name}")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_shared_modules_are_public_and_named_for_what_they_hold():
    names = [p for package in PACKAGES for p in modules(package) if p.stem != "__init__"]
    assert not [p for p in names if p.stem.startswith("_")], "shared helpers live in public modules"
    assert not [p for p in names if p.stem in VAGUE_NAMES]


def test_loading_the_definitions_module_has_no_side_effects(tmp_path):
    """Importing the code location (what `dagster dev` and every run worker do first) creates no
    folder, sets no environment variable and runs no served-model code; Dagster calls `defs()`."""
    home = tmp_path / "home"
    script = f"""
import os, sys
before = dict(os.environ)
import pipelines.definitions
assert not os.path.exists({str(home)!r}), "import created FT_HOME"
assert dict(os.environ) == before, "import changed the environment"
assert "resources.served_model" not in sys.modules, "the served model was imported"
defs = pipelines.definitions.defs()
assert os.path.exists({str(home)!r}) and "resources.served_model" not in sys.modules
print(len(list(defs.resolve_asset_graph().get_all_asset_keys())))
"""
    env = {"PATH": "/usr/bin:/bin", "FT_HOME": str(home), "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-1] == "11"
