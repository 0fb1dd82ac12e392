"""How every editor's prompts are written: decided here, once, and used identically by all editors.

Choice: the model's chat template with the assistant turn pre-filled. A cloze prompt ("The Space Needle is located
in") is asked as "Complete the sentence: ..." and the assistant turn starts with the cloze itself, so the target
(" Seattle", with its leading space) is scored and generated right after the cloze, tokenised exactly as in raw
completion. A question or instruction ends the prompt at the start of the assistant turn; the target follows with no
space.
We use the chat template because the default model is an instruct model, LTE is trained and served in chat form, and
parameter editors must be measured on the same text the served model sees. Tokenizers without a chat template fall
back to plain text with the same rules (or take one with `--chat-template FILE`).

Rendered text is always tokenised without special tokens (the template writes them), so a prompt starts with the
tokenizer's BOS text whenever the tokenizer would add it by default and the template did not write it (Gemma's GGUF
has no template and its model needs <bos>; SmolLM2 adds none).

Edits enter only through `facts`: each is flattened to one line and stripped of the tokenizer's special (control)
tokens, so an edit's text cannot close the user turn or replace the system prompt.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from lte.core.errors import InputError


def is_cloze(prompt: str) -> bool:
    """A sentence to complete ('The Space Needle is located in') rather than a question or an instruction,
    which end with punctuation."""
    return not prompt.rstrip().endswith(("?", ".", "!", ":", '"', ")"))


FACTS_HEADER = "Recently updated facts (they override what you knew; ignore those that do not bear on the request):"
CLOZE_INSTRUCTION = "Complete the sentence:"


def user_message(query: str, facts: Sequence[str] = ()) -> str:
    """The user turn: an optional block of updated facts, then the request."""
    request = f"{CLOZE_INSTRUCTION} {query.strip()}" if is_cloze(query) else query.strip()
    if not facts:
        return request
    lines = "\n".join(f"- {fact}" for fact in facts)
    return f"{FACTS_HEADER}\n{lines}\n\n{request}"


def assistant_prefill(query: str) -> str:
    """Text the assistant turn starts with: the cloze itself, or nothing for a question or instruction."""
    return query.strip() if is_cloze(query) else ""


def format_target(query: str, target: str) -> str:
    """The target as it follows the prompt: ' Seattle' after a cloze, 'Seattle' at the start of an answer.
    Text the model generated itself (locality references) already has its own spacing and is kept as it is."""
    if is_cloze(query):
        return target if target.startswith(" ") else f" {target}"
    return target


_CONTROL_PATTERNS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def control_pattern(tokenizer: PreTrainedTokenizerBase) -> re.Pattern:
    """Every special token of the tokenizer (named ones and added control tokens such as <|im_end|> or
    <end_of_turn>), longest first; built once per tokenizer."""
    if tokenizer not in _CONTROL_PATTERNS:
        tokens = set(tokenizer.all_special_tokens) | {"<|im_start|>", "<|im_end|>"}
        tokens |= {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
        ordered = sorted((t for t in tokens if t), key=len, reverse=True)
        _CONTROL_PATTERNS[tokenizer] = re.compile("|".join(map(re.escape, ordered)))
    return _CONTROL_PATTERNS[tokenizer]


def sanitize_fact(text: str, tokenizer: PreTrainedTokenizerBase) -> str:
    return re.sub(r"\s+", " ", control_pattern(tokenizer).sub(" ", text)).strip()


def with_start(tokenizer: PreTrainedTokenizerBase, text: str) -> str:
    """`text` led by the BOS token when the tokenizer adds one by default and the text lacks it."""
    bos = tokenizer.bos_token
    if not bos or text.startswith(bos):
        return text
    default = tokenizer("a")["input_ids"]
    return bos + text if default[:1] == [tokenizer.bos_token_id] else text


def render(tokenizer: PreTrainedTokenizerBase, query: str, facts: Sequence[str] = ()) -> str:
    """The full text the model continues; the answer starts right after it."""
    facts = [f for f in (sanitize_fact(f, tokenizer) for f in facts) if f]
    content = user_message(query, facts)
    if tokenizer.chat_template:
        chat = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                             add_generation_prompt=True)
        return with_start(tokenizer, chat + assistant_prefill(query))
    if is_cloze(query):  # plain-text fallback for base models
        return with_start(tokenizer, f"{content}\n{assistant_prefill(query)}")
    return with_start(tokenizer, f"{content}\nAnswer: ")


def render_conversation(tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict[str, str]],
                        facts: Sequence[str] = ()) -> str:
    """A client's chat (server): its last user turn is written exactly as `render` writes a query, with the facts;
    earlier turns pass through. Returns the text the model continues."""
    *history, last = messages
    if last.get("role") != "user" or not tokenizer.chat_template:
        raise InputError("the last message must come from the user")
    facts = [f for f in (sanitize_fact(f, tokenizer) for f in facts) if f]
    turns = list(history) + [{"role": "user", "content": user_message(last["content"], facts)}]
    text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    return with_start(tokenizer, text + assistant_prefill(last["content"]))


def chat_messages(query: str, facts: Sequence[str], answer: str) -> list[dict[str, str]]:
    """A training conversation in the same shape as `render` (used by alignment)."""
    return [{"role": "user", "content": user_message(query, facts)},
            {"role": "assistant", "content": assistant_prefill(query) + format_target(query, answer)}]


def plain_pair(messages: Sequence[dict[str, str]]) -> tuple[str, str]:
    """A training conversation (`chat_messages`) as the (prompt, completion) text `render` writes for a model with
    no chat template: `with_start`(prompt) + completion is `render`'s text + the answer."""
    user, assistant = messages[0]["content"], messages[1]["content"]
    cloze = user.rsplit("\n", 1)[-1].startswith(f"{CLOZE_INSTRUCTION} ")
    return f"{user}\n" + ("" if cloze else "Answer: "), assistant
