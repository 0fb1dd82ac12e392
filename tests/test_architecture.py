"""The import rule of docs/architecture.md, checked on the source. A module's layer is the folder it lives in:

    lte/core/                 core: what every layer may use (records, prompts, scoring, the Editor interface, ...)
    retrieval/, baselines/    core only (and their own folder); neither imports the other
    lte/method/               LTE itself: core and retrieval
    lte/ (the rest)           application (serving, bench, commands, the CLI, the registry): anything

No command imports `lte.cli`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"lte.core": "core", "retrieval": "retrieval", "baselines": "baselines", "lte.method": "method"}
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
    """The layer of the folder the module is in (`lte.core.schema` → core); the rest of `lte` is application."""
    return next((name for folder, name in FOLDERS.items() if module == folder or module.startswith(folder + ".")),
                "application")


ALLOWED = {"core": {"core"}, "retrieval": {"core", "retrieval"}, "baselines": {"core", "baselines"},
           "method": {"core", "retrieval", "method"},
           "application": {"core", "retrieval", "baselines", "method", "application"}}


def test_every_layer_is_a_folder_that_holds_modules():
    assert {layer(m) for m in MODULES} == set(ALLOWED)
    assert not [m for m in MODULES if m.startswith("lte.") and m.count(".") == 1 and m not in APPLICATION_TOP
                and not (ROOT / "lte" / m.split(".")[1]).is_dir()], \
        "a module directly under lte/ belongs in a layer folder"


APPLICATION_TOP = {"lte.cli", "lte.cli_reference", "lte.registry"}  # the entry points; everything else sits in a layer


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
