"""Teacher-forced target scores and greedy generation for one causal LM, batched. Every editor answers through this."""

from __future__ import annotations

import contextlib
import inspect
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class TargetScore:
    """Per target token: its log-probability after the prompt and whether it was the model's top prediction."""

    logprobs: tuple[float, ...]
    correct: tuple[bool, ...]

    @property
    def token_acc(self) -> float:
        return sum(self.correct) / len(self.correct) if self.correct else 0.0

    @property
    def mean_logprob(self) -> float:
        return sum(self.logprobs) / len(self.logprobs) if self.logprobs else float("-inf")


@dataclass(frozen=True)
class Completion:
    """One greedy completion: its text, token counts and why it stopped ('stop': end of turn, 'length': limit)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


def target_ids(tokenizer: PreTrainedTokenizerBase, prompt: str, target: str) -> tuple[list[int], list[int]]:
    """Token ids of prompt and target as the model would see them in one text. If tokenising the joined text
    changes the prompt's tokens (a merge across the boundary), the target is tokenised on its own instead."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(prompt + target, add_special_tokens=False)["input_ids"]
    if full_ids[: len(prompt_ids)] == prompt_ids and len(full_ids) > len(prompt_ids):
        return prompt_ids, full_ids[len(prompt_ids):]
    return prompt_ids, tokenizer(target, add_special_tokens=False)["input_ids"]


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), so little compute goes to padding."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def kept_logits(model: PreTrainedModel, keep: int | torch.Tensor, **inputs) -> torch.Tensor:
    """The logits of the last `keep` positions (an int) or of the positions in `keep` (an index tensor). Where the
    model takes `logits_to_keep` the vocabulary projection runs only there (most of a small model's logits cost)."""
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        return model(**inputs, logits_to_keep=keep).logits
    logits = model(**inputs).logits
    return logits[:, -keep:] if isinstance(keep, int) else logits[:, keep]


class ModelRunner:
    """Runs a model on rendered prompts, batching similar lengths together; results come back in input order.
    Scoring pads on the right, generation on the left."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, batch_size: int = 16,
                 context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext):
        """context: what every forward pass runs inside (`LoadedModel.context`: a LoRA adapter switched off)."""
        self.model, self.tokenizer, self.batch_size, self.context = model, tokenizer, batch_size, context

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def score(self, prompts: Sequence[str], targets: Sequence[str]) -> list[TargetScore]:
        pairs = [target_ids(self.tokenizer, p, t) for p, t in zip(prompts, targets)]
        scores: list[TargetScore | None] = [None] * len(pairs)
        with self.context():
            for rows in length_batches([len(p) + len(t) for p, t in pairs], self.batch_size):
                for row, score in zip(rows, self._score_batch([pairs[i] for i in rows])):
                    scores[row] = score
        return scores

    def _score_batch(self, pairs: list[tuple[list[int], list[int]]]) -> list[TargetScore]:
        sequences = [p + t for p, t in pairs]
        width = max(len(s) for s in sequences)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([s + [pad] * (width - len(s)) for s in sequences], device=self.device)
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences], device=self.device)
        # The logits at position i predict token i + 1; only the target-predicting span is needed, so where the
        # model allows it the vocabulary projection runs on that span alone (a fifth of the compute of a 135M model).
        first = min(len(p) for p, _ in pairs) - 1
        logits = self._logits(input_ids, mask, first)
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        scores = []
        for row, (prompt, target) in enumerate(pairs):
            offset = len(prompt) - 1 - first
            positions = torch.arange(offset, offset + len(target), device=self.device)
            wanted = torch.tensor(target, device=self.device)
            step = logprobs[row, positions]
            scores.append(TargetScore(tuple(step.gather(1, wanted[:, None]).squeeze(1).tolist()),
                                      tuple((step.argmax(-1) == wanted).tolist())))
        return scores

    def _logits(self, input_ids: torch.Tensor, mask: torch.Tensor, first: int) -> torch.Tensor:
        """Logits for positions first..end."""
        return kept_logits(self.model, input_ids.shape[1] - first, input_ids=input_ids, attention_mask=mask)

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
        lengths = [len(ids) for ids in self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]]
        texts: list[str] = [""] * len(prompts)
        for rows in length_batches(lengths, self.batch_size):
            batch = self.tokenizer([prompts[i] for i in rows], add_special_tokens=False,
                                   padding=True, padding_side="left", return_tensors="pt",
                                   return_token_type_ids=False).to(self.device)  # transformers 4.56 refuses them
            with self.context():
                output = self.model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                             pad_token_id=self.tokenizer.pad_token_id)
            new_tokens = output[:, batch["input_ids"].shape[1]:]
            for row, text in zip(rows, self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
                texts[row] = text
        return texts

    @torch.no_grad()
    def complete(self, prompt: str, max_new_tokens: int) -> Completion:
        """One prompt, greedy, with the token counts and finish reason an API reports."""
        ids = self.tokenizer(prompt, add_special_tokens=False, return_tensors="pt").to(self.device)
        with self.context():
            output = self.model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                                         pad_token_id=self.tokenizer.pad_token_id)[0, ids["input_ids"].shape[1]:]
        stops = self.model.generation_config.eos_token_id
        stops = stops if isinstance(stops, list) else [stops, self.tokenizer.eos_token_id]
        ended = bool(len(output)) and output[-1].item() in stops
        reason = "stop" if ended or len(output) < max_new_tokens else "length"
        return Completion(self.tokenizer.decode(output, skip_special_tokens=True), ids["input_ids"].shape[1],
                          len(output), reason)

    def stream(self, prompt: str, max_new_tokens: int, stop: threading.Event) -> tuple[Iterator[str], threading.Thread]:
        """Greedy generation on a thread, its text pieces as they come. Setting `stop` ends it after the current
        token (a client that went away should not keep the model busy); join the thread before reusing the model."""
        from transformers import (
            StoppingCriteria,
            StoppingCriteriaList,
            TextIteratorStreamer,
        )

        class Stopped(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs) -> bool:
                return stop.is_set()

        ids = self.tokenizer(prompt, add_special_tokens=False, return_tensors="pt").to(self.device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        def generate(**kwargs) -> None:
            with self.context():
                self.model.generate(**kwargs)

        thread = threading.Thread(target=generate, daemon=True, kwargs=dict(
            **ids, max_new_tokens=max_new_tokens, do_sample=False, streamer=streamer,
            pad_token_id=self.tokenizer.pad_token_id, stopping_criteria=StoppingCriteriaList([Stopped()])))
        thread.start()
        return iter(streamer), thread
