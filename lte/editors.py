"""The registry of editing methods by name, as the CLI and the benchmark choose them.

Each entry builds an `Editor` from the shared settings; method-specific options come as keyword arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from lte.editor import Editor, OracleContextEditor, UneditedEditor
from lte.models import LoadedModel, load_model
from lte.settings import Settings


@dataclass(frozen=True)
class EditorSpec:
    description: str
    build: Callable[[Settings, LoadedModel, dict[str, Any]], Editor]
    # Which model the editor answers with: the one named by --model, or the base model it was aligned from.
    uses_base_model: bool = False


def _lte(settings: Settings, loaded: LoadedModel, options: dict[str, Any]) -> Editor:
    from lte.inference import LTEEditor

    return LTEEditor.from_settings(settings, loaded, **options)


def _rome(settings: Settings, loaded: LoadedModel, options: dict[str, Any]) -> Editor:
    from baselines.rome import ROMEEditor

    return ROMEEditor.from_options(settings, loaded, **options)


def _grace(settings: Settings, loaded: LoadedModel, options: dict[str, Any]) -> Editor:
    from baselines.grace import GRACEEditor

    return GRACEEditor.from_options(settings, loaded, **options)


def _ke(settings: Settings, loaded: LoadedModel, options: dict[str, Any]) -> Editor:
    from baselines.knowledge_editor import KnowledgeEditor

    return KnowledgeEditor.from_options(settings, loaded, **options)


EDITORS: dict[str, EditorSpec] = {
    "none": EditorSpec("the unedited base model", lambda s, m, o: UneditedEditor(m, **o), uses_base_model=True),
    "context": EditorSpec("oracle: the gold edit written into the prompt", lambda s, m, o: OracleContextEditor(m, **o),
                          uses_base_model=True),
    "lte": EditorSpec("LTE: retrieved edits in the prompt of the aligned model (--model)", _lte),
    "lte-unaligned": EditorSpec("LTE retrieval with the base model (ablation)", _lte, uses_base_model=True),
    "rome": EditorSpec("ROME: rank-one update of one MLP", _rome, uses_base_model=True),
    "grace": EditorSpec("GRACE: key-value codebook at one layer", _grace, uses_base_model=True),
    "ke": EditorSpec("KnowledgeEditor: trained hypernetwork weight update", _ke, uses_base_model=True),
}


def editor_names() -> list[str]:
    return list(EDITORS)


def build_editor(name: str, settings: Settings, loaded: LoadedModel | None = None, **options: Any) -> Editor:
    """Build editor `name`. `loaded` is the model named by settings.model (loaded here when not given)."""
    if name not in EDITORS:
        raise KeyError(f"unknown editor '{name}'; choose one of: {', '.join(EDITORS)}")
    spec = EDITORS[name]
    loaded = loaded or load_model(settings.model, settings.home)
    if spec.uses_base_model and loaded.base_spec != loaded.spec:
        loaded = load_model(loaded.base_spec, settings.home)
    editor = spec.build(settings, loaded, options)
    editor.name = name
    return editor
