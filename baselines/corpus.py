"""Text for second-moment statistics (ROME's covariance): user-given files or `datasets` names, or, offline by
default, text the model itself writes in answer to the instructions lte ships."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

from lte_data import data_lines, data_path

from lte.core import files, prompting
from lte.core.errors import need
from lte.core.models import LoadedModel
from lte.core.scoring import ModelRunner


def corpus_texts(loaded: LoadedModel, sources: Sequence[str], tokens: int, seed: int = 0,
                 cache: Path | None = None) -> Iterator[str]:
    """Texts until roughly `tokens` tokens have been yielded (the caller may stop earlier). Model-written text is
    kept in `cache` (a JSON file), so statistics for another layer reuse it instead of generating it again."""
    if sources:
        yield from _source_texts(sources)
    elif cache is not None and cache.is_file() and json.loads(cache.read_text())["tokens"] >= tokens:
        yield from json.loads(cache.read_text())["texts"]
    else:
        texts = list(_model_texts(loaded, tokens, seed))
        if cache is not None:
            files.write_json(cache, {"tokens": tokens, "seed": seed, "texts": texts}, indent=None)
        yield from texts


def _source_texts(sources: Sequence[str]) -> Iterator[str]:
    for source in sources:
        path = Path(source)
        if path.is_file():
            for paragraph in path.read_text(encoding="utf-8").split("\n\n"):
                if paragraph.strip():
                    yield paragraph.strip()
            continue
        datasets = need("datasets", f"the corpus {source}")  # a hub dataset with a 'text' column

        name, _, config = source.partition(":")
        rows = datasets.load_dataset(name, config or None, split="train", streaming=True)
        for row in rows:
            if row.get("text", "").strip():
                yield row["text"]


def _model_texts(loaded: LoadedModel, tokens: int, seed: int, length: int = 96) -> Iterator[str]:
    instructions = data_lines("instructions.txt")
    entities = [f"Tell me about {line}." for line in entity_names()]
    requests = instructions + entities
    random.Random(seed).shuffle(requests)
    runner = ModelRunner(loaded.model, loaded.tokenizer, batch_size=16)
    produced = 0
    for start in range(0, len(requests), 16):
        prompts = [prompting.render(loaded.tokenizer, r) for r in requests[start:start + 16]]
        for prompt, answer in zip(prompts, runner.generate(prompts, length)):
            yield prompt + answer
            produced += len(loaded.tokenizer(prompt + answer, add_special_tokens=False)["input_ids"])
        if produced >= tokens:
            return


def entity_names() -> list[str]:
    """The people, companies, landmarks, countries and cities of data/entities.json."""
    tables = json.loads(data_path("entities.json").read_text())
    return [name for kind in ("person", "company", "landmark", "country", "city") for name in tables[kind]]
