"""The registry of editing methods by name, as the CLI and the benchmark choose them.

Each entry names the `Editor` class (imported when first used, so `lte --help` stays light) and which model it
answers with. An editor's options are its class's `config_class`, filled from `--set KEY=VALUE` by `editor_config`;
`build_editor` is the one way the commands make an editor. Adding a method: write its module in `baselines/` (an
`Editor` subclass with a config dataclass and `from_config`), add one line here, and the contract test
(tests/test_editor_contract.py) and `lte eval`/`lte bench` pick it up.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lte.core.config import build_config
from lte.core.editor import Editor
from lte.core.errors import ConfigError
from lte.core.models import LoadedModel, load_base, load_model
from lte.core.settings import Settings


@dataclass(frozen=True)
class EditorSpec:
    description: str
    target: str  # "module:Class" of the Editor subclass
    # Which model the editor answers with: the one named by --model, or the base model it was aligned from.
    uses_base_model: bool = False
    # For a method that must learn before it edits: "module:LearnedMethod" (`lte train NAME`) and its paper.
    learned: str | None = None
    paper: str = ""

    def editor_class(self) -> type[Editor]:
        return _resolve(self.target)

    def learned_method(self):
        return _resolve(self.learned)


def _resolve(target: str):
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


EDITORS: dict[str, EditorSpec] = {
    "none": EditorSpec("the unedited base model", "lte.core.editor:UneditedEditor", uses_base_model=True),
    "context": EditorSpec("oracle: the gold edit written into the prompt", "lte.core.editor:OracleContextEditor",
                          uses_base_model=True),
    "lte": EditorSpec("LTE: retrieved edits in the prompt of the aligned model (--model)",
                      "lte.method.editor:LTEEditor"),
    "lte-unaligned": EditorSpec("LTE retrieval with the base model (ablation)", "lte.method.editor:LTEEditor",
                                uses_base_model=True),
    "rome": EditorSpec("ROME: rank-one update of one MLP", "baselines.rome:ROMEEditor", uses_base_model=True),
    "grace": EditorSpec("GRACE: key-value codebook at one layer", "baselines.grace:GRACEEditor", uses_base_model=True),
    "ke": EditorSpec("KnowledgeEditor: trained hypernetwork weight update",
                     "baselines.knowledge_editor:KnowledgeEditor", uses_base_model=True,
                     learned="baselines.knowledge_editor:KE",
                     paper="KnowledgeEditor hypernetwork (De Cao et al., 2021)"),
    "memit": EditorSpec("MEMIT: batched least-squares update of several MLPs", "baselines.memit:MEMITEditor",
                        uses_base_model=True),
    "emmet": EditorSpec("EMMET: batched equality-constrained update (batched ROME)", "baselines.emmet:EMMETEditor",
                        uses_base_model=True),
    "alphaedit": EditorSpec("AlphaEdit: MEMIT projected onto the null space of preserved keys",
                            "baselines.alphaedit:AlphaEditEditor", uses_base_model=True),
    "coachhook": EditorSpec("CoachHooK: MEMIT's sequential update in hook copies, applied to in-scope tokens only",
                            "baselines.coachhook:CoachHooKEditor", uses_base_model=True),
    "memoe": EditorSpec("MEMoE-style: a bypass mixture of low-rank experts at one MLP, routed by the input's subject",
                        "baselines.memoe:MEMoEEditor", uses_base_model=True),
    "ft": EditorSpec("FT-L: fine-tuning of MLP weights on the edit, each weight within ±ε of its original",
                     "baselines.ft:FTEditor", uses_base_model=True),
    "mend": EditorSpec("MEND: trained network that edits through the gradient's rank-one factors",
                       "baselines.mend:MENDEditor", uses_base_model=True,
                       learned="baselines.mend:MEND",
                       paper="MEND gradient-factor editor network (Mitchell et al., 2022)"),
}


def editor_names() -> list[str]:
    return list(EDITORS)


def learned_editors() -> dict[str, EditorSpec]:
    """The editors `lte train` trains, by name."""
    return {name: spec for name, spec in EDITORS.items() if spec.learned}


def spec_for(name: str) -> EditorSpec:
    if name not in EDITORS:
        raise ConfigError(f"unknown editor '{name}'; choose one of: {', '.join(EDITORS)}")
    return EDITORS[name]


def editor_config(name: str, options: Mapping[str, Any] | None = None) -> Any:
    """Editor `name`'s options over their defaults, checked (unknown names, wrong types, fixed options refused)."""
    cls = spec_for(name).editor_class()
    return build_config(cls.config_class, options or {}, name, cls.fixed_options)


def build_editor(name: str, settings: Settings, loaded: LoadedModel | None = None, config: Any = None,
                 batch_size: int = 16) -> Editor:
    """Build editor `name`. `loaded` is the model named by settings.model (loaded here when not given); `config`
    its options (`editor_config`; defaults when None)."""
    spec = spec_for(name)
    config = config if config is not None else editor_config(name)
    loaded = loaded or load_model(settings.model, settings.home, **settings.load_options)
    if spec.uses_base_model:
        loaded = base_model_of(loaded, settings)
    editor = spec.editor_class().from_config(settings, loaded, config, batch_size)
    editor.name, editor.config = name, config
    return editor


def base_model_of(loaded: LoadedModel, settings: Settings) -> LoadedModel:
    """The unedited base `loaded` derives from: itself for a plain model, else loaded (where the user placed
    models). Locality references and parameter editors use it."""
    return load_base(loaded, settings.home, **settings.load_options)
