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
import json
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
    after a failed connection or a 502/503/504 answer, 0.5 s apart and doubling (a restarting server comes back in
    seconds). concurrency: requests in flight to the server at once (it batches them; 8 keeps a small server busy
    without queueing there what we can queue here)."""

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


RETRIED_STATUS = (502, 503, 504)


class RemoteGeneration:
    """Forwards each prompt to `POST {url}/completions` (greedy: temperature 0), streaming or not."""

    def __init__(self, cfg: RemoteConfig):
        self.cfg = cfg
        self.concurrency = cfg.concurrency
        self._client: httpx.AsyncClient | None = None  # created inside the server's event loop, on first use

    @property
    def model_id(self) -> str:
        return self.cfg.model

    def model_for(self, has_edits: bool) -> str:
        return self.cfg.model if has_edits or not self.cfg.base_model else self.cfg.base_model

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            headers = {"Authorization": f"Bearer {self.cfg.key}"} if self.cfg.key else {}
            self._client = httpx.AsyncClient(base_url=self.cfg.url.rstrip("/") + "/", headers=headers,
                                             timeout=httpx.Timeout(self.cfg.timeout))
        return self._client

    def body(self, prompt: str, model: str, max_tokens: int, stream: bool) -> dict:
        return {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": stream}

    async def complete(self, prompt: str, model: str, max_tokens: int) -> Completion:
        response = await self._send(self.body(prompt, model, max_tokens, stream=False), stream=False)
        try:
            answer = response.json()
            choice = answer["choices"][0]
            usage = answer.get("usage") or {}
            return Completion(choice["text"], int(usage.get("prompt_tokens", 0)),
                              int(usage.get("completion_tokens", 0)), choice.get("finish_reason") or "stop")
        except (ValueError, KeyError, IndexError, TypeError) as error:
            raise self._error(502, f"answered something that is not a completion ({type(error).__name__}: "
                                   f"{error})", "generator_bad_response") from None

    @contextlib.asynccontextmanager
    async def streaming(self, prompt: str, model: str, max_tokens: int) -> AsyncIterator[AsyncIterator[str]]:
        """Connects (and fails with a GenerationError) before the caller sends any byte of its own stream."""
        response = await self._send(self.body(prompt, model, max_tokens, stream=True), stream=True)
        try:
            yield self._pieces(response)
        finally:
            with anyio.CancelScope(shield=True):
                await response.aclose()

    async def _pieces(self, response: httpx.Response) -> AsyncIterator[str]:
        """The text of each server-sent event until `[DONE]`. A server that fails mid-stream ends the stream
        without `[DONE]` (the headers are gone; the client sees an incomplete stream, as it should)."""
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[len("data:"):].strip()
            if data == "[DONE]":
                return
            try:
                text = json.loads(data)["choices"][0].get("text") or ""
            except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                raise self._error(502, f"streamed an event that is not a completion chunk: {data[:200]}",
                                  "generator_bad_response") from None
            if text:
                yield text

    async def _send(self, body: dict, stream: bool) -> httpx.Response:
        """POST with retries on failed connections and 502/503/504 answers; any other failure maps at once."""
        delay = 0.5
        for attempt in range(self.cfg.retries + 1):
            last = attempt == self.cfg.retries
            try:
                request = self.client.build_request("POST", "completions", json=body)
                response = await self.client.send(request, stream=stream)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError) as error:
                # RemoteProtocolError: a kept-alive connection the server closed when it went away
                if last:
                    raise self._error(503, f"is unreachable ({type(error).__name__}: {error}); retry when it is "
                                           "back", "generator_unavailable") from None
            except httpx.TimeoutException as error:
                raise self._error(504, f"did not answer within {self.cfg.timeout:g} s ({type(error).__name__}); "
                                       "raise --generator-timeout", "generator_timeout") from None
            except httpx.TransportError as error:
                raise self._error(502, f"failed: {type(error).__name__}: {error}", "generator_failed") from None
            else:
                if response.status_code < 400:
                    return response
                message = await self._message(response)
                if last or response.status_code not in RETRIED_STATUS:
                    raise self._error(502, f"answered HTTP {response.status_code}: {message}", "generator_error")
            log.warning("generator %s: attempt %d failed; retrying in %.1f s", self.cfg.url, attempt + 1, delay)
            await asyncio.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")  # the loop always returns or raises

    @staticmethod
    async def _message(response: httpx.Response) -> str:
        raw = (await response.aread()).decode("utf-8", "replace")
        await response.aclose()
        try:
            return str(json.loads(raw)["error"]["message"])
        except (ValueError, KeyError, TypeError):
            return raw[:300] or response.reason_phrase

    def _error(self, status: int, what: str, code: str) -> GenerationError:
        return GenerationError(status, f"the generation server at {self.cfg.url} {what}", code)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
