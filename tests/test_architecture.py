"""The import rule of README's Architecture section, checked on the source: core ← retrieval, baselines ← application.

core: what every layer may use (records, prompts, scoring, the Editor interface, the harness, errors, config).
retrieval and baselines: core only (and their own package). application: anything; no command imports `lte.cli`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = {"lte", "lte.errors", "lte.config", "lte.settings", "lte.schema", "lte.datasets", "lte.prompting",
        "lte.scoring", "lte.metrics", "lte.models", "lte.tiny", "lte.editor", "lte.harness", "lte.catalog",
        "lte.tables"}
OURS = ("lte", "retrieval", "baselines")


def modules() -> dict[str, set[str]]:
    """Every module of ours and the modules of ours it imports (at any depth in the file: lazy imports count)."""
    found = {}
    for package in OURS:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            imported = set()
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    imported.add(node.module)
                elif isinstance(node, ast.Import):
                    imported.update(alias.name for alias in node.names)
            found[name] = {m for m in imported if m.split(".")[0] in OURS}
    return found


MODULES = modules()


def layer(module: str) -> str:
    if module in CORE:
        return "core"
    return module.split(".")[0] if module.split(".")[0] in ("retrieval", "baselines") else "application"


ALLOWED = {"core": {"core"}, "retrieval": {"core", "retrieval"}, "baselines": {"core", "baselines"},
           "application": {"core", "retrieval", "baselines", "application"}}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_each_module_imports_only_from_its_layer_or_below(module):
    wrong = sorted(m for m in MODULES[module] if layer(m) not in ALLOWED[layer(module)])
    assert not wrong, f"{module} ({layer(module)}) imports {wrong}"


def test_no_command_imports_the_cli_and_no_path_is_built_from_the_checkout():
    commands = [m for m in MODULES if m.startswith("lte.commands")]
    assert commands and not [m for m in commands if "lte.cli" in MODULES[m]]
    for package in OURS:  # the datasets folder is a setting (LTE_DATASETS / --datasets-dir), not a path from __file__
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            assert not ("__file__" in text and "shared" in text), f"{path} builds a path to the shared data"
