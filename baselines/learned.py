"""What the learned editors (KnowledgeEditor, MEND) share: a method is described once (`LearnedMethod`: its weights,
its network, how the network turns an edit into ΔW), and from that description come the editor behind the `Editor`
interface (`LearnedEditor`), the checkpoint format and its default place, and the training loop
(`baselines/training.py`, `lte train <method>`). A new learned editor writes those three functions and a config.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from baselines.common import WeightBackup, decoder_layers, mlp_projection
from lte.core import files
from lte.core.editor import ModelEditor
from lte.core.errors import CheckpointError, EditorUnavailableError
from lte.core.models import LoadedModel
from lte.core.schema import Edit
from lte.core.settings import Settings


@dataclass(frozen=True)
class LearnedMethod:
    """name: the registry name, `lte train` sub-command and checkpoint folder. config_class: the network's shape
    (fixed by the checkpoint). edited_parameters(loaded, cfg) → {name: weight}; build(loaded, cfg) → the network;
    updates(loaded, network, weights, predictor, edit, cfg) → {name: ΔW}, differentiable in the network (the
    predictor generates with the current weights, for methods that condition on the model's own answer).
    train_defaults: `TrainConfig` fields this method trains with unless the user overrides them."""

    name: str
    config_class: type
    edited_parameters: Callable[[LoadedModel, Any], dict[str, nn.Parameter]]
    build: Callable[[LoadedModel, Any], nn.Module]
    updates: Callable[..., dict[str, torch.Tensor]]
    train_defaults: dict = field(default_factory=dict)


def projection_weights(loaded: LoadedModel, layers: Sequence[int], method: str) -> dict[str, nn.Parameter]:
    """Parameter name → the (out × in) MLP output projection of each layer (negative = from the end)."""
    count = len(decoder_layers(loaded.model))
    names = dict(loaded.model.named_parameters())
    chosen = {}
    for layer in layers:
        projection = mlp_projection(loaded.model, layer % count)
        if projection.transposed:
            raise EditorUnavailableError(f"{method}: transposed (Conv1D) projections are not supported")
        chosen[next(n for n, p in names.items() if p is projection.weight)] = projection.weight
    return chosen


# ---------------------------------------------------------------- checkpoints

@dataclass
class Checkpoint:
    """A trained network for one model: its config, weights, dev curve and training step."""

    model: str
    config: Any
    state: dict
    curve: list[dict] = field(default_factory=list)
    step: int = 0
    method: str = "ke"

    def save(self, path: Path) -> None:
        """Written to a temporary file and renamed: a crash never leaves half a checkpoint."""
        with files.atomic_path(path) as tmp:
            torch.save({"model": self.model, "config": asdict(self.config), "state": self.state, "curve": self.curve,
                        "step": self.step, "method": self.method}, tmp)
        files.write_json(path.with_suffix(".curve.json"), self.curve)

    @classmethod
    def load(cls, path: Path, config_class: type, method: str | None = None) -> Checkpoint:
        """`method`, when given, must be the one that wrote the file (checked before its config is read)."""
        saved = torch.load(path, weights_only=False)
        if method and saved.get("method", "ke") != method:
            raise CheckpointError(f"{method}: {path} holds a '{saved.get('method', 'ke')}' network, not '{method}'")
        config = config_class(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved["config"].items()})
        return cls(saved["model"], config, saved["state"], saved.get("curve", []), saved.get("step", 0),
                   saved.get("method", "ke"))  # checkpoints written before MEND existed are KE's


def default_checkpoint(home: Path, model_spec: str, method: str) -> Path:
    key = hashlib.sha1(model_spec.encode()).hexdigest()[:10]
    return home / method / f"{Path(model_spec).name}-{key}" / f"{method}.pt"


def load_checkpoint(method: LearnedMethod, path: Path, model_spec: str) -> Checkpoint:
    """The checkpoint at `path`, refused with the fix when it is missing or belongs to another model or method."""
    if not path.is_file():
        raise CheckpointError(
            f"{method.name}: no trained network at {path}. Train one for this model first: "
            f"`lte --model {model_spec} train {method.name} --data <training split>` (or pass --set checkpoint=PATH)")
    checkpoint = Checkpoint.load(path, method.config_class, method.name)
    if checkpoint.model != model_spec:
        raise CheckpointError(f"{method.name}: checkpoint {path} was trained for model '{checkpoint.model}', "
                              f"not '{model_spec}'")
    return checkpoint


# ---------------------------------------------------------------- the editor

@dataclass
class LearnedOptions:
    """checkpoint: the trained network (default: the latest `lte train <method>` wrote for --model). Everything
    else (the method's config: layers, sizes...) is fixed by the checkpoint it was trained with."""

    checkpoint: str | None = None


class LearnedEditor(ModelEditor):
    """Edits by adding the trained network's ΔW, one edit at a time; sequential edits accumulate; `restore` is
    exact. Subclasses name their `method`."""

    method: ClassVar[LearnedMethod]
    config_class = LearnedOptions

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.fixed_options = {f.name: f"fixed by the trained checkpoint (set at `lte train {cls.method.name}` time)"
                             for f in fields(cls.method.config_class)}

    def __init__(self, loaded: LoadedModel, checkpoint: Checkpoint, batch_size: int = 16):
        super().__init__(loaded, batch_size)
        self.cfg = checkpoint.config
        self.params = self.method.edited_parameters(loaded, self.cfg)
        self.network = self.method.build(loaded, self.cfg)
        self.network.load_state_dict(checkpoint.state)
        self.network.eval()
        self.backup = WeightBackup()
        self.relative_updates: list[float] = []  # ‖ΔW‖ / ‖W‖ over the edited weights, per edit

    @classmethod
    def from_config(cls, settings: Settings, loaded: LoadedModel, config: LearnedOptions | None = None,
                    batch_size: int = 16) -> LearnedEditor:
        config = config or LearnedOptions()
        path = (Path(config.checkpoint) if config.checkpoint
                else default_checkpoint(settings.home, loaded.spec, cls.method.name))
        return cls(loaded, load_checkpoint(cls.method, path, loaded.spec), batch_size)

    def apply(self, edits: Sequence[Edit]) -> None:
        for edit in edits:
            self.apply_one(edit)

    def apply_one(self, edit: Edit) -> None:
        with torch.no_grad():
            updates = self.method.updates(self.loaded, self.network, self.params, self, edit, self.cfg)
            for name, delta in updates.items():
                self.backup.save(self.params[name])
                self.params[name].add_(delta.to(self.params[name].dtype))
            self.relative_updates.append(float(sum(d.norm() for d in updates.values())
                                               / sum(self.params[n].norm() for n in updates)))

    def stats(self) -> dict:
        if not self.relative_updates:
            return {}
        return {"edits": len(self.relative_updates),
                "update_rel_norm": round(sum(self.relative_updates) / len(self.relative_updates), 6)}

    def restore(self) -> None:
        self.backup.restore()
        self.relative_updates = []
