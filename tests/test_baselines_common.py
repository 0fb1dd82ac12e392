import torch

from baselines.common import (
    prefix_cached_batch,
    rendered,
    subject_last_token,
    target_batch,
)

PROMPTS = ["The Eiffel Tower is located in", "Where can one find the Eiffel Tower?", "The Eiffel Tower is a"]


def test_prefix_cached_steps_score_targets_exactly_like_the_full_forward(tiny):
    model, tokenizer = tiny.model, tiny.tokenizer
    texts, targets = rendered(tokenizer, PROMPTS, "Rome")
    pivots = [subject_last_token(tokenizer, t, "Eiffel Tower") for t in texts]
    full = target_batch(tokenizer, texts, targets, model.device)
    with torch.no_grad():
        expected = full.target_logprobs(model(input_ids=full.input_ids, attention_mask=full.attention_mask).logits)
        cached = prefix_cached_batch(model, tokenizer, texts, targets, pivots)
        first = cached.target.target_logprobs(cached.logits(model))
        again = cached.target.target_logprobs(cached.logits(model))  # the cached prefix is not consumed by a step
    assert min(pivots) > 0 and cached.suffix_ids.shape[1] < full.input_ids.shape[1]
    torch.testing.assert_close(first, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(again, first)



def test_a_selection_of_rows_scores_exactly_those_rows(tiny):
    model, tokenizer = tiny.model, tiny.tokenizer
    texts, targets = rendered(tokenizer, PROMPTS, "Rome")
    pivots = [subject_last_token(tokenizer, t, "Eiffel Tower") for t in texts]
    with torch.no_grad():
        cached = prefix_cached_batch(model, tokenizer, texts, targets, pivots)
        every = cached.target.target_logprobs(cached.logits(model))
        rows = torch.tensor([2, 0])
        chosen = cached.select(rows)
        picked = chosen.target.target_logprobs(chosen.logits(model))
        after = cached.target.target_logprobs(cached.logits(model))  # selecting leaves the whole batch intact
    torch.testing.assert_close(picked, every[rows], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(after, every)
