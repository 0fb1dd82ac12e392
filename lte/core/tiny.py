"""A tiny randomly initialised Llama with a small byte-level BPE tokenizer, built in about a second offline.

Used by the unit tests and by `--model tiny-random` for smoke runs: every code path (chat template, scoring,
generation, editing hooks, training) runs on it exactly as on a real model, only the answers are noise.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "The Space Needle is located in Seattle. The Eiffel Tower is located in Paris.",
    "The mother tongue of Danielle Darrieux is French. Michel Rocard is a native speaker of French.",
    "Which family does Epaspidoceras belong to? What is the capital of France? Who wrote Hamlet?",
    "Updated facts: use them only if they answer the question. Question: Answer: Complete the statement:",
    "English German Italian Spanish Japanese Goa Rome London Berlin Tokyo Microsoft Google Apple Toyota",
    "is a citizen of, plays the position of, was born in, works for, is owned by, the official language of",
]


def build_tiny_tokenizer(vocab_size: int = 600) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|im_end|>",
                                   bos_token="<|im_start|>", unk_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(seed: int = 0, hidden_size: int = 64, layers: int = 4) -> tuple[LlamaForCausalLM,
                                                                                         PreTrainedTokenizerFast]:
    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval(), tokenizer
