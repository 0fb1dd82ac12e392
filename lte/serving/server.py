"""`lte serve`: an OpenAI-compatible HTTP API over the aligned model and the edit store, plus a web page.

- `POST /v1/chat/completions` (also `stream: true`), `POST /v1/completions`, `GET /v1/models`: answers use the
  relevant stored edits; each response names them (ids, scores) in an extra `lte` field.
- `POST/GET /v1/edits`, `GET/DELETE /v1/edits/{id}`, `POST /v1/edits/search`: edits take effect on the next request.
- `GET /health` and the page at `/` are open; with an API key set, every `/v1` request needs `Authorization: Bearer`.

Prompts and routing come from the editor (`EditRetrieval.chat_prompt`, `LTEEditor.runner_for`), so the server
answers exactly as `lte ask` and the harness do. Generation (`lte.serving.generation`) runs on this process's model,
or on an OpenAI-compatible generation server (`--generator-url`), through `GenerationQueue.slot()`: in arrival
order, at most `concurrency` at once (1 locally), the queue bounded (503 when full); a request cancelled while
waiting leaves it, and a slot is released only once its generation has stopped. Edit text only ever enters the
fact block of the user turn.

`generation_only` turns the server into a plain generation backend for another `lte serve --generator-url`:
`/v1/completions` continues its prompt as written (the OpenAI meaning of that endpoint), no edits are retrieved, and
the request's `model` picks the aligned model or its unedited base.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, TypeVar

import anyio
import httpx
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from lte.core import prompting
from lte.core.errors import InputError, SchemaError
from lte.core.schema import Edit
from lte.core.scoring import Completion
from lte.method.editor import EditRetrieval, LTEEditor
from lte.serving.bodies import ChatRequest, CompletionRequest, EditsRequest, SearchRequest, problem
from lte.serving.generation import GenerationError, LocalGeneration, RemoteGeneration
from retrieval.store import Hit

BodyModel = TypeVar("BodyModel", bound=BaseModel)


@dataclass
class ServerConfig:
    """api_key: required bearer token for /v1 (None: open). max_body_bytes: larger requests get 413.
    max_queue: generation requests waiting at once before 503. max_tokens: cap on a request's max_tokens.
    generation_only: serve as a plain generation backend (no edits; see the module docstring)."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_body_bytes: int = 1_000_000
    max_queue: int = 64
    max_tokens: int = 512
    default_tokens: int = 128
    generation_only: bool = False


class APIError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.code = status, message, kind, code


def error_body(status: int, message: str, kind: str = "invalid_request_error", code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}}, status_code=status)


# ---------------------------------------------------------------- the generation queue

class GenerationQueue:
    """At most `concurrency` generations at once, the others waiting in arrival order (asyncio.Semaphore wakes
    waiters first come, first served), with at most `max_queue` waiting. The wait count is kept in a `finally`, so
    requests cancelled while queued (a client that went away) leave no trace."""

    def __init__(self, max_queue: int, concurrency: int = 1):
        self.max_queue, self.concurrency, self.waiting = max_queue, concurrency, 0
        self._slots: asyncio.Semaphore | None = None  # created on first use, inside the server's event loop

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        self._slots = self._slots or asyncio.Semaphore(self.concurrency)
        if self.waiting >= self.max_queue:
            raise APIError(503, "server busy: too many queued generation requests", "server_error", "overloaded")
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self._slots.release()


Generation = LocalGeneration | RemoteGeneration


class Service:
    """What all requests share: the retrieval (store + prompt writing), the generation, the store's write lock
    and the generation queue."""

    def __init__(self, retrieval: EditRetrieval, generation: Generation, cfg: ServerConfig):
        self.retrieval, self.generation, self.cfg = retrieval, generation, cfg
        self.write_lock = threading.Lock()
        self.queue = GenerationQueue(cfg.max_queue, generation.concurrency)

    @classmethod
    def local(cls, editor: LTEEditor, cfg: ServerConfig) -> Service:
        """Generation on the editor's own models, with its routing."""
        return cls(editor.retrieval, LocalGeneration.of(editor), cfg)

    @property
    def model_id(self) -> str:
        return self.generation.model_id

    @property
    def store(self):
        if self.cfg.generation_only:
            raise APIError(404, "this is a generation-only server: it keeps no edits", code="not_found")
        return self.retrieval.store

    def prompt_for(self, messages: list[dict[str, str]]) -> tuple[str, list[Hit]]:
        try:
            if self.cfg.generation_only:
                return prompting.render_conversation(self.retrieval.tokenizer, messages), []
            return self.retrieval.chat_prompt(messages)
        except InputError as error:
            raise APIError(400, str(error)) from None

    def model_for(self, hits: list[Hit], body: dict) -> str:
        """The routing: aligned model for prompts with edits, unedited base for the others; a generation-only
        server takes the model the request names."""
        if self.cfg.generation_only and isinstance(body.get("model"), str) and body["model"]:
            return body["model"]
        return self.generation.model_for(bool(hits))

    async def complete(self, request: Request, prompt: str, model: str, max_tokens: int) -> Completion:
        """One completion in its turn; a client that went away while queued costs no generation."""
        async with self.queue.slot():
            if await request.is_disconnected():
                raise APIError(499, "client closed the request while it was queued")
            return await self.generation.complete(prompt, model, max_tokens)

    async def streamed(self, kind: str, prompt: str, model: str, hits: list[Hit], max_tokens: int
                       ) -> QueuedStreamingResponse:
        """A streaming response whose slot and generation are taken before the headers go out: a full queue is a
        503 and an unreachable generation server a 503/502, never a broken stream."""
        held = contextlib.AsyncExitStack()
        try:
            await held.enter_async_context(self.queue.slot())
            pieces = await held.enter_async_context(self.generation.streaming(prompt, model, max_tokens))
            return QueuedStreamingResponse(event_stream(kind, self, pieces, hits), held,
                                           media_type="text/event-stream")
        except BaseException:
            await held.aclose()
            raise


class QueuedStreamingResponse(StreamingResponse):
    """A stream whose generation slot was taken before the headers went out (a full queue is a 503, not a broken
    stream) and is given back when the response ends, however it ends: the body is closed first, then the
    generation (its thread joined, or its connection closed), then the slot released."""

    def __init__(self, content: AsyncIterator[str], held: contextlib.AsyncExitStack, **kwargs):
        super().__init__(content, **kwargs)
        self.held = held

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()
                await self.held.aclose()


# ---------------------------------------------------------------- request parsing

def edits_used(hits: list[Hit]) -> list[dict[str, Any]]:
    return [{"id": h.edit.id, "score": h.score, "statement": h.edit.statement} for h in hits]


def parse_edits(body: Any) -> list[Edit]:
    records = body.get("edits") if isinstance(body, dict) and "edits" in body else body
    records = records if isinstance(records, list) else [records]
    if not records:
        raise APIError(400, "no edits given")
    try:
        return [Edit.from_dict(record, f"edits[{i}]") for i, record in enumerate(records)]
    except SchemaError as error:
        raise APIError(400, str(error)) from None


async def json_body(request: Request) -> Any:
    """The body as JSON, read in chunks and refused (413) as soon as it passes the size limit, whether or not the
    client declared its length."""
    limit = service_of(request).cfg.max_body_bytes
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise APIError(413, f"request body over {limit} bytes")
    try:
        return json.loads(bytes(raw) or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        where = f" at line {error.lineno}" if isinstance(error, json.JSONDecodeError) else ""
        raise APIError(400, f"body is not valid JSON{where}") from None


async def json_object(request: Request) -> dict:
    body = await json_body(request)
    if not isinstance(body, dict):
        raise APIError(400, "body must be a JSON object")
    return body


def validated(model: type[BodyModel], body: dict) -> BodyModel:
    """The body as its pydantic model; a bad field is a 400 that names it."""
    try:
        return model.model_validate(body)
    except ValidationError as error:
        raise APIError(400, problem(error)) from None


def schema(model: type[BaseModel]) -> dict:
    """A route's request body for the OpenAPI schema (the body is read by hand, for its size limit)."""
    return {"requestBody": {"content": {"application/json": {"schema": model.model_json_schema()}}, "required": True}}


# ---------------------------------------------------------------- responses

def completion_body(kind: str, service: Service, completion: Completion, hits: list[Hit]) -> dict:
    """The one response shape of both endpoints: kind 'chat' (chat.completion) or 'text' (text_completion)."""
    if kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": completion.text}}
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion"}
    else:
        choice = {"index": 0, "text": completion.text, "logprobs": None}
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion"}
    usage = {"prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens,
             "total_tokens": completion.prompt_tokens + completion.completion_tokens}
    return {**head, "created": int(time.time()), "model": service.model_id,
            "choices": [{**choice, "finish_reason": completion.finish_reason}], "usage": usage,
            "lte": {"edits": edits_used(hits)}}


async def event_stream(kind: str, service: Service, pieces: AsyncIterator[str], hits: list[Hit]
                       ) -> AsyncIterator[str]:
    """Server-sent events of a streamed completion, kind 'chat' (chat.completion.chunk: the role with the edits
    used, the text, the end) or 'text' (text_completion chunks, the first carrying the edits)."""
    chunk_id = f"chatcmpl-{uuid.uuid4().hex}" if kind == "chat" else f"cmpl-{uuid.uuid4().hex}"
    created = int(time.time())

    def event(text: str | None, finish: str | None = None, extra: dict | None = None, opening: bool = False) -> str:
        if kind == "chat":
            delta = {} if text is None else {"role": "assistant", "content": text} if opening else {"content": text}
            choice, obj = {"index": 0, "delta": delta, "finish_reason": finish}, "chat.completion.chunk"
        else:
            choice, obj = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}, "text_completion"
        payload = {"id": chunk_id, "object": obj, "created": created, "model": service.model_id,
                   "choices": [choice], **(extra or {})}
        return f"data: {json.dumps(payload)}\n\n"

    yield event("", extra={"lte": {"edits": edits_used(hits)}}, opening=True)
    async with contextlib.aclosing(pieces):
        async for piece in pieces:
            yield event(piece)
    yield event(None, finish="stop")
    yield "data: [DONE]\n\n"


# ---------------------------------------------------------------- dependencies and handlers

def service_of(request: Request) -> Service:
    return request.app.state.service


def authorised(request: Request) -> None:
    key = service_of(request).cfg.api_key
    if key is None:
        return
    header = request.headers.get("authorization", "")
    token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
    # compared as UTF-8 bytes: compare_digest refuses non-ASCII str, and a bad key must be 401, never 500
    if not secrets.compare_digest(token.encode("utf-8", "surrogateescape"), key.encode()):
        raise APIError(401, "missing or wrong API key (send 'Authorization: Bearer KEY')",
                       "invalid_request_error", "invalid_api_key")


api = APIRouter(prefix="/v1", dependencies=[Depends(authorised)])
pages = APIRouter()


@pages.get("/", response_class=HTMLResponse, include_in_schema=False)
def page() -> str:
    return files("lte.serving").joinpath("static/index.html").read_text(encoding="utf-8")


@pages.get("/health")
def health(service: Service = Depends(service_of)) -> dict:
    where = service.generation.cfg.url if isinstance(service.generation, RemoteGeneration) else "local"
    return {"status": "ok", "model": service.model_id, "queued": service.queue.waiting, "generation": where}


@api.get("/models")
def models(service: Service = Depends(service_of)) -> dict:
    names = list(service.generation.runners) if service.cfg.generation_only else [service.model_id]
    return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "lte"}
                                       for name in names]}


@api.post("/chat/completions", openapi_extra=schema(ChatRequest))
async def chat(request: Request, service: Service = Depends(service_of)):
    body = await json_object(request)
    chat_request = validated(ChatRequest, body)
    messages = [{"role": m.role, "content": m.text()} for m in chat_request.messages]
    max_tokens = chat_request.tokens(service.cfg.default_tokens, service.cfg.max_tokens)
    prompt, hits = await asyncio.to_thread(service.prompt_for, messages)
    model = service.model_for(hits, body)
    if chat_request.stream:
        return await service.streamed("chat", prompt, model, hits, max_tokens)
    return completion_body("chat", service, await service.complete(request, prompt, model, max_tokens), hits)


@api.post("/completions", openapi_extra=schema(CompletionRequest))
async def completions(request: Request, service: Service = Depends(service_of)):
    """A generation-only server continues the prompt as written; otherwise the prompt is a one-turn question
    answered with the relevant edits."""
    body = await json_object(request)
    completion = validated(CompletionRequest, body)
    if service.cfg.generation_only:
        prompt, hits = completion.prompt, []
    else:
        prompt, hits = await asyncio.to_thread(service.prompt_for, [{"role": "user", "content": completion.prompt}])
    model = service.model_for(hits, body)
    max_tokens = completion.tokens(service.cfg.default_tokens, service.cfg.max_tokens)
    if completion.stream:
        return await service.streamed("text", prompt, model, hits, max_tokens)
    return completion_body("text", service, await service.complete(request, prompt, model, max_tokens), hits)


@api.post("/edits", openapi_extra=schema(EditsRequest))
async def add_edits(request: Request, service: Service = Depends(service_of)):
    edits = parse_edits(await json_body(request))

    def write():
        with service.write_lock:
            return service.store.add(edits, progress=False,
                                            where={edit.id: f"edits[{i}]" for i, edit in enumerate(edits)})

    try:
        report = await asyncio.to_thread(write)
    except InputError as error:  # e.g. an explicit id already stored for another edit
        raise APIError(400, str(error)) from None
    return {"added": report.added, "skipped": report.skipped, "superseded": report.superseded,
            "ids": [edit.id for edit in edits]}


@api.get("/edits")
def list_edits(offset: int = 0, limit: int = 50, history: bool = False, after: int | None = None,
               service: Service = Depends(service_of)) -> dict:
    """A page of edits, oldest first: from `offset`, or after the `next_after` of the previous page (a seek, as
    cheap at the end of a large store as at its start)."""
    if offset < 0 or not 1 <= limit <= 1000:
        raise APIError(400, "offset must be ≥ 0 and limit between 1 and 1000")
    page = service.store.list(history=history, offset=offset, limit=limit, after=after)
    return {"object": "list", "total": service.store.count(history), "offset": offset,
            "next_after": page[-1].seq if len(page) == limit else None,
            "data": [{**s.edit.to_dict(), "status": s.status, "superseded_by": s.superseded_by} for s in page]}


@api.get("/edits/{edit_id}")
def get_edit(edit_id: str, service: Service = Depends(service_of)) -> dict:
    stored = service.store.get(edit_id)
    if stored is None:
        raise APIError(404, f"no edit with id {edit_id}", code="not_found")
    return {**stored.edit.to_dict(), "status": stored.status, "superseded_by": stored.superseded_by}


@api.delete("/edits/{edit_id}")
def delete_edit(edit_id: str, service: Service = Depends(service_of)) -> dict:
    with service.write_lock:
        if not service.store.delete(edit_id):
            raise APIError(404, f"no edit with id {edit_id}", code="not_found")
    return {"id": edit_id, "deleted": True}


@api.post("/edits/search", openapi_extra=schema(SearchRequest))
async def search(request: Request, service: Service = Depends(service_of)):
    wanted = validated(SearchRequest, await json_object(request))
    hits = await asyncio.to_thread(service.store.search, wanted.query, wanted.k)
    return {"object": "list", "threshold": service.store.threshold,
            "data": [{**h.edit.to_dict(), "score": h.score} for h in hits]}


# ---------------------------------------------------------------- the app

async def on_api_error(request: Request, error: APIError) -> JSONResponse:
    return error_body(error.status, error.message, error.kind, error.code)


async def on_http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    return error_body(error.status_code, str(error.detail))


async def on_generation_error(request: Request, error: GenerationError) -> JSONResponse:
    return error_body(error.status, error.message, "server_error" if error.status >= 500 else
                      "invalid_request_error", error.code)


async def on_store_unreachable(request: Request, error: httpx.TransportError) -> JSONResponse:
    """A Chroma server (--chroma-url) that went away: 503 while it is down; the next request after it is back
    works again, without restarting `lte serve`."""
    return error_body(503, f"the edit store is unreachable ({type(error).__name__}: {error}); retry when the Chroma "
                      "server is back", "server_error", "store_unavailable")


async def on_validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    return error_body(400, f"invalid request: {error.errors()}")


class DeclaredBodyLimit:
    """413 at once for a declared Content-Length over the limit (chunked bodies are cut off by `json_body`). Plain
    ASGI rather than an `http` middleware function, which would hide client disconnects from the handlers."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        length = dict(scope.get("headers", [])).get(b"content-length", b"") if scope["type"] == "http" else b""
        if length.isdigit() and int(length) > self.limit:
            await error_body(413, f"request body over {self.limit} bytes")(scope, receive, send)
            return
        await self.app(scope, receive, send)


def create_app(service: Service) -> FastAPI:
    app = FastAPI(title="lte", description="Learning-to-Edit server: answers with the stored edits.")
    app.state.service = service
    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(GenerationError, on_generation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(httpx.TransportError, on_store_unreachable)
    app.add_middleware(DeclaredBodyLimit, limit=service.cfg.max_body_bytes)
    app.include_router(pages)
    app.include_router(api)
    return app


def serve(service: Service) -> None:
    import uvicorn

    uvicorn.run(create_app(service), host=service.cfg.host, port=service.cfg.port, log_level="info")
