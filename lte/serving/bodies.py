"""The request bodies of `lte serve`, as pydantic models: validated in one place, with errors that name the field
(`messages[0].role: ...`), and published in the server's OpenAPI schema (`/docs`, `/openapi.json`). Unknown fields
are accepted and ignored, as OpenAI's API does (clients send `temperature`, `user`, ...)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError, field_validator

from lte.core.schema import EditRecord


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    text: str = ""


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        """The message's text; of OpenAI's content parts, the text ones."""
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class Generation(BaseModel):
    """What both completion endpoints share."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    def tokens(self, default: int, ceiling: int) -> int:
        return min(self.max_completion_tokens or self.max_tokens or default, ceiling)


class ChatRequest(Generation):
    messages: list[Message] = Field(min_length=1)


class CompletionRequest(Generation):
    prompt: str | list[str]

    @field_validator("prompt")
    @classmethod
    def one_prompt(cls, value: str | list[str]) -> str:
        if isinstance(value, list):
            if len(value) != 1:
                raise ValueError("one prompt per request")
            value = value[0]
        if not value.strip():
            raise ValueError("must be a non-empty string")
        return value


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    query: str = Field(min_length=1)
    k: int = Field(3, ge=1, le=50)

    @field_validator("query")
    @classmethod
    def not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must be a non-empty string")
        return value


class EditBatch(BaseModel):
    edits: list[EditRecord] = Field(min_length=1)


class EditsRequest(RootModel[EditRecord | list[EditRecord] | EditBatch]):
    """`POST /v1/edits`: one edit, a list of them, or {"edits": [...]}. Its schema is published; the edits are
    checked by `Edit.from_dict` (the same `EditRecord`), so an error names the edit: `edits[2]: field 'prompt': ...`."""


def problem(error: ValidationError) -> str:
    """A pydantic error as one line naming each bad field: `messages[0].role: Input should be ...`."""
    lines = dict.fromkeys(f"{_where(item['loc']) or 'body'}: {item['msg']}" for item in error.errors())
    return "; ".join(lines)


def _where(location: tuple) -> str:
    """('messages', 0, 'role') → 'messages[0].role'; the branch tags of a union ('str', 'list[str]') are left out."""
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.isidentifier() and part not in ("str", "int", "bool", "float"):
            path += ("." if path else "") + part
    return path
