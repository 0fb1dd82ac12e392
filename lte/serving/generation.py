"""Where `lte serve` generates: on its own model(s) (`LocalGeneration`), or on any OpenAI-compatible generation
server (`RemoteGeneration`: vLLM, TGI, llama.cpp's server, SGLang, another `lte serve --generation-only`).

Both take the prompt already written by `lte.core.prompting` (chat template, fact block, assistant prefill) and the
name of the model that should continue it: the aligned one for prompts carrying edits, the unedited base for the
others (`model_for`). The remote side therefore uses the raw-text `/v1/completions` endpoint — the only OpenAI
endpoint that continues a prompt exactly as written, so an aligned model served elsewhere sees what it was trained
on, assistant prefill included.

Failures of the generation server become `GenerationError`s the server answers in the OpenAI error shape:
unreachable → 503, timed out → 504, an error or a malformed answer from it → 502.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import anyio
import httpx

from lte.core.scoring import Completion, ModelRunner

log = logging.getLogger(__name__)


class GenerationError(Exception):
    """A request the generation side cannot serve; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str, code: str):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


# ---------------------------------------------------------------- on this process's model

class LocalGeneration:
    """Greedy generation with models loaded here, one request at a time (`concurrency` 1: a CPU or one GPU is
    busy with one generation). `runners` maps model names to runners; `edited`/`unedited` name the two routes."""

    concurrency = 1

    def __init__(self, runners: dict[str, ModelRunner], edited: str, unedited: str):
        self.runners, self.edited, self.unedited = runners, edited, unedited

    @classmethod
    def of(cls, editor) -> LocalGeneration:
        """The routing of an `LTEEditor`: its aligned model for prompts with edits, its unedited base (when it
        routes) for the others, each under its model spec."""
        aligned, base = editor.runner_for(True), editor.runner_for(False)
        if base is aligned:
            base_name = editor.model_name
        else:
            base_name = editor.unedited.spec if editor.unedited is not None else editor.loaded.base_spec
        return cls({editor.model_name: aligned, base_name: base}, editor.model_name, base_name)

    @property
    def model_id(self) -> str:
        return self.edited

    def model_for(self, has_edits: bool) -> str:
        return self.edited if has_edits else self.unedited

    def runner(self, model: str) -> ModelRunner:
        if model not in self.runners:
            raise GenerationError(404, f"model '{model}' is not served here (serving: {', '.join(self.runners)})",
                                  "model_not_found")
        return self.runners[model]

    async def complete(self, prompt: str, model: str, max_tokens: int) -> Completion:
        return await asyncio.to_thread(self.runner(model).complete, prompt, max_tokens)

    @contextlib.asynccontextmanager
    async def streaming(self, prompt: str, model: str, max_tokens: int) -> AsyncIterator[AsyncIterator[str]]:
        """The text pieces of one generation on a thread. However the stream ends (a client disconnect too), the
        thread is told to stop and joined before this exits, so the model is free when the slot is given back."""
        stop = threading.Event()
        pieces, thread = self.runner(model).stream(prompt, max_tokens, stop)

        async def texts() -> AsyncIterator[str]:
            while (piece := await asyncio.to_thread(next, pieces, None)) is not None:
                if piece:
                    yield piece

        try:
            yield texts()
        finally:
            stop.set()
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(thread.join)


# ---------------------------------------------------------------- on a generation server

@dataclass
class RemoteConfig:
    """url: the server's OpenAI base URL (`http://host:8000/v1`; a URL with no path gets `/v1`). model: the model
    name that continues prompts carrying edits (the aligned one); base_model: the one for prompts without (its
    unedited base; None: `model` for both). key: sent as a bearer token. timeout: seconds to connect and between
    bytes of an answer (a slow first token on a loaded GPU server is normal; 120 s). retries: further attempts
    after a failed connection or a 408/429/5xx answer, with the openai client's backoff (from 0.5 s, doubling; a
    restarting server comes back in seconds). concurrency: requests in flight to the server at once (it batches
    them; 8 keeps a small server busy without queueing there what we can queue here)."""

    url: str
    model: str
    base_model: str | None = None
    key: str | None = None
    timeout: float = 120.0
    retries: int = 2
    concurrency: int = 8

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"--generator-url {self.url}: expected http(s)://host[:port][/v1]")
        if parts.path in ("", "/"):
            self.url = self.url.rstrip("/") + "/v1"
        if self.retries < 0 or self.concurrency < 1 or self.timeout <= 0:
            raise ValueError("--generator-retries must be ≥ 0, --generator-concurrency ≥ 1, --generator-timeout > 0")


class RemoteGeneration:
    """Forwards each prompt to `POST {url}/completions` (greedy: temperature 0), streaming or not, through the
    `openai` client (its retries with backoff, its timeouts and its server-sent-event parsing)."""

    def __init__(self, cfg: RemoteConfig):
        self.cfg = cfg
        self.concurrency = cfg.concurrency
        self._client = None  # created inside the server's event loop, on first use

    @property
    def model_id(self) -> str:
        return self.cfg.model

    def model_for(self, has_edits: bool) -> str:
        return self.cfg.model if has_edits or not self.cfg.base_model else self.cfg.base_model

    @property
    def client(self):
        if self._client is None:
            from openai import AsyncOpenAI

            self._client = AsyncOpenAI(base_url=self.cfg.url, api_key=self.cfg.key or "unused",
                                       timeout=self.cfg.timeout, max_retries=self.cfg.retries)
        return self._client

    async def complete(self, prompt: str, model: str, max_tokens: int) -> Completion:
        answer = await self._create(prompt, model, max_tokens, stream=False)
        try:
            choice, usage = answer.choices[0], answer.usage
            return Completion(choice.text, usage.prompt_tokens if usage else 0,
                              usage.completion_tokens if usage else 0, choice.finish_reason or "stop")
        except (AttributeError, IndexError, TypeError) as error:
            raise self._error(502, f"answered something that is not a completion ({type(error).__name__}: "
                                   f"{error})", "generator_bad_response") from None

    @contextlib.asynccontextmanager
    async def streaming(self, prompt: str, model: str, max_tokens: int) -> AsyncIterator[AsyncIterator[str]]:
        """Connects (and fails with a GenerationError) before the caller sends any byte of its own stream."""
        stream = await self._create(prompt, model, max_tokens, stream=True)
        try:
            yield self._pieces(stream)
        finally:
            with anyio.CancelScope(shield=True):
                await stream.close()

    async def _pieces(self, stream) -> AsyncIterator[str]:
        """The text of each event. A server that fails mid-stream ends the stream early (the headers are gone;
        the client sees an incomplete stream, as it should)."""
        try:
            async for chunk in stream:
                text = chunk.choices[0].text if chunk.choices else ""
                if text:
                    yield text
        except (AttributeError, IndexError, TypeError) as error:
            raise self._error(502, f"streamed an event that is not a completion chunk ({error})",
                              "generator_bad_response") from None
        except httpx.TransportError as error:
            log.warning("generator %s: the stream ended early (%s)", self.cfg.url, type(error).__name__)

    async def _create(self, prompt: str, model: str, max_tokens: int, stream: bool):
        """One completion request; the client retries failed connections and 408/429/5xx answers itself."""
        import openai

        try:
            return await self.client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens,
                                                        temperature=0, stream=stream)
        except openai.APITimeoutError:
            raise self._error(504, f"did not answer within {self.cfg.timeout:g} s; raise --generator-timeout",
                              "generator_timeout") from None
        except openai.APIConnectionError as error:
            cause = error.__cause__ or error
            raise self._error(503, f"is unreachable ({type(cause).__name__}: {cause}); retry when it is back",
                              "generator_unavailable") from None
        except openai.APIStatusError as error:
            detail = error.body.get("message") if isinstance(error.body, dict) else None
            raise self._error(502, f"answered HTTP {error.status_code}: {detail or error.message}",
                              "generator_error") from None

    def _error(self, status: int, what: str, code: str) -> GenerationError:
        return GenerationError(status, f"the generation server at {self.cfg.url} {what}", code)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
