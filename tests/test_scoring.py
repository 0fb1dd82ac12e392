import pytest

from lte.core.scoring import ModelRunner, length_batches


def test_length_batches_group_similar_lengths_and_cover_every_index():
    batches = length_batches([3, 10, 4, 9, 1], batch_size=2)
    assert batches == [[1, 3], [2, 0], [4]]


def test_batched_results_come_back_in_input_order(tiny):
    prompts = ["a", "a longer prompt with many words in it", "mid length prompt", "b c", "x y z w v u"]
    targets = [" one", " two three", " four", " five six seven", " eight"]
    batched = ModelRunner(tiny.model, tiny.tokenizer, batch_size=2)
    alone = ModelRunner(tiny.model, tiny.tokenizer, batch_size=1)
    for got, want in zip(batched.score(prompts, targets), alone.score(prompts, targets)):
        assert got.correct == want.correct
        assert got.logprobs == pytest.approx(want.logprobs, abs=1e-4)
    assert batched.generate(prompts, 4) == alone.generate(prompts, 4)
