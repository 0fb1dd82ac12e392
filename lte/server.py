"""`lte serve`: an OpenAI-compatible HTTP API over the aligned model and the edit store, plus a web page.

- `POST /v1/chat/completions` (also `stream: true`), `POST /v1/completions`, `GET /v1/models`: answers use the
  relevant stored edits; each response names them (ids, scores) in an extra `lte` field.
- `POST/GET /v1/edits`, `GET/DELETE /v1/edits/{id}`, `POST /v1/edits/search`: edits take effect on the next request.
- `GET /health` and the page at `/` are open; with an API key set, every `/v1` request needs `Authorization: Bearer`.
Generation runs off the event loop, one request at a time in arrival order (an asyncio semaphore is FIFO); the
queue is bounded (503 when full). Edit text only ever enters the fact block of the user turn (`lte.prompting`).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, AsyncIterator

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lte import prompting
from lte.inference import LTEEditor
from lte.schema import Edit, SchemaError
from retrieval.store import Hit


@dataclass
class ServerConfig:
    """api_key: required bearer token for /v1 (None: open). max_body_bytes: larger requests get 413.
    max_queue: generation requests waiting at once before 503. max_tokens: cap on a request's max_tokens."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_body_bytes: int = 1_000_000
    max_queue: int = 64
    max_tokens: int = 512
    default_tokens: int = 128


class APIError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.code = status, message, kind, code


def error_body(status: int, message: str, kind: str, code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}}, status_code=status)


class Service:
    """The editor (model + store) shared by all requests, and the generation queue."""

    def __init__(self, editor: LTEEditor, cfg: ServerConfig):
        self.editor, self.cfg = editor, cfg
        self.write_lock = threading.Lock()
        self._slot: asyncio.Semaphore | None = None
        self.waiting = 0

    @property
    def model_id(self) -> str:
        return self.editor.model_name

    async def generation_slot(self):
        if self._slot is None:
            self._slot = asyncio.Semaphore(1)
        if self.waiting >= self.cfg.max_queue:
            raise APIError(503, "server busy: too many queued generation requests", "server_error", "overloaded")
        self.waiting += 1
        await self._slot.acquire()
        self.waiting -= 1
        return self._slot

    def prompt_for(self, messages: list[dict[str, str]]) -> tuple[str, list[Hit]]:
        hits = self.editor.retrieve([messages[-1]["content"]])[0]
        facts = [hit.edit.statement for hit in hits]
        try:
            return prompting.render_conversation(self.editor.loaded.tokenizer, messages, facts), hits
        except ValueError as error:
            raise APIError(400, str(error)) from None

    def generate(self, prompt: str, max_tokens: int, has_facts: bool = True) -> tuple[str, int, int, str]:
        """Greedy completion: (text, prompt tokens, completion tokens, finish reason)."""
        chosen = self.editor.model_for(has_facts)
        tokenizer, model = chosen.tokenizer, chosen.model
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").to(model.device)
        output = model.generate(**ids, max_new_tokens=max_tokens, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id)[0, ids["input_ids"].shape[1]:]
        finished = bool(len(output)) and output[-1].item() == tokenizer.eos_token_id
        text = tokenizer.decode(output, skip_special_tokens=True)
        reason = "stop" if finished or len(output) < max_tokens else "length"
        return text, ids["input_ids"].shape[1], len(output), reason

    def stream(self, prompt: str, max_tokens: int, has_facts: bool = True):
        """Start generation in a thread; returns an iterator over text pieces."""
        from transformers import TextIteratorStreamer

        chosen = self.editor.model_for(has_facts)
        tokenizer, model = chosen.tokenizer, chosen.model
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").to(model.device)
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        thread = threading.Thread(target=model.generate, kwargs=dict(
            **ids, max_new_tokens=max_tokens, do_sample=False, streamer=streamer,
            pad_token_id=tokenizer.pad_token_id), daemon=True)
        thread.start()
        return streamer, thread


def edits_used(hits: list[Hit]) -> list[dict[str, Any]]:
    return [{"id": h.edit.id, "score": h.score, "statement": h.edit.statement} for h in hits]


def parse_messages(body: dict) -> list[dict[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty list")
    parsed = []
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):  # OpenAI content parts: keep the text ones
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        if not isinstance(content, str) or message.get("role") not in ("system", "user", "assistant"):
            raise APIError(400, f"messages[{i}]: needs a role (system, user, assistant) and text content")
        parsed.append({"role": message["role"], "content": content})
    return parsed


def requested_tokens(body: dict, cfg: ServerConfig) -> int:
    value = body.get("max_completion_tokens") or body.get("max_tokens") or cfg.default_tokens
    if not isinstance(value, int) or value < 1:
        raise APIError(400, "'max_tokens' must be a positive integer")
    return min(value, cfg.max_tokens)


def parse_edits(body: Any) -> list[Edit]:
    records = body.get("edits") if isinstance(body, dict) and "edits" in body else body
    records = records if isinstance(records, list) else [records]
    if not records:
        raise APIError(400, "no edits given")
    try:
        return [Edit.from_dict(record, f"edits[{i}]") for i, record in enumerate(records)]
    except SchemaError as error:
        raise APIError(400, str(error)) from None


def create_app(service: Service) -> FastAPI:
    cfg = service.cfg
    app = FastAPI(title="lte", description="Learning-to-Edit server: answers with the stored edits.")

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError):
        return error_body(error.status, error.message, error.kind, error.code)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        return error_body(error.status_code, str(error.detail), "invalid_request_error")

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError):
        return error_body(400, f"invalid request: {error.errors()}", "invalid_request_error")

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > cfg.max_body_bytes:
            return error_body(413, f"request body over {cfg.max_body_bytes} bytes", "invalid_request_error")
        return await call_next(request)

    def authorised(request: Request) -> None:
        if cfg.api_key is None:
            return
        header = request.headers.get("authorization", "")
        token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
        if not secrets.compare_digest(token, cfg.api_key):
            raise APIError(401, "missing or wrong API key (send 'Authorization: Bearer KEY')",
                           "invalid_request_error", "invalid_api_key")

    async def json_body(request: Request) -> Any:
        raw = await request.body()
        if len(raw) > cfg.max_body_bytes:
            raise APIError(413, f"request body over {cfg.max_body_bytes} bytes")
        try:
            return json.loads(raw or b"null")
        except json.JSONDecodeError as error:
            raise APIError(400, f"body is not valid JSON: {error.msg} at line {error.lineno}") from None

    guard = [Depends(authorised)]

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return files("lte").joinpath("static/index.html").read_text(encoding="utf-8")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": service.model_id, "queued": service.waiting}

    @app.get("/v1/models", dependencies=guard)
    def models() -> dict:
        return {"object": "list", "data": [{"id": service.model_id, "object": "model", "created": 0,
                                            "owned_by": "lte"}]}

    @app.post("/v1/chat/completions", dependencies=guard)
    async def chat(request: Request):
        body = await json_body(request)
        if not isinstance(body, dict):
            raise APIError(400, "body must be a JSON object")
        messages, max_tokens = parse_messages(body), requested_tokens(body, cfg)
        prompt, hits = await asyncio.to_thread(service.prompt_for, messages)
        if body.get("stream"):
            return StreamingResponse(stream_chat(prompt, hits, max_tokens), media_type="text/event-stream")
        slot = await service.generation_slot()
        try:
            text, n_prompt, n_done, finish = await asyncio.to_thread(service.generate, prompt, max_tokens,
                                                                     bool(hits))
        finally:
            slot.release()
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": service.model_id,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
                "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_done, "total_tokens": n_prompt + n_done},
                "lte": {"edits": edits_used(hits)}}

    async def stream_chat(prompt: str, hits: list[Hit], max_tokens: int) -> AsyncIterator[str]:
        slot = await service.generation_slot()
        chunk_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(delta: dict, finish: str | None = None, extra: dict | None = None) -> str:
            payload = {"id": chunk_id, "object": "chat.completion.chunk", "created": created,
                       "model": service.model_id, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                       **(extra or {})}
            return f"data: {json.dumps(payload)}\n\n"

        try:
            yield chunk({"role": "assistant", "content": ""}, extra={"lte": {"edits": edits_used(hits)}})
            streamer, thread = service.stream(prompt, max_tokens, bool(hits))
            pieces = iter(streamer)
            while (piece := await asyncio.to_thread(next, pieces, None)) is not None:
                if piece:
                    yield chunk({"content": piece})
            await asyncio.to_thread(thread.join)
            yield chunk({}, finish="stop")
            yield "data: [DONE]\n\n"
        finally:
            slot.release()

    @app.post("/v1/completions", dependencies=guard)
    async def completions(request: Request):
        body = await json_body(request)
        prompt_text = body.get("prompt") if isinstance(body, dict) else None
        if isinstance(prompt_text, list) and len(prompt_text) == 1:
            prompt_text = prompt_text[0]
        if not isinstance(prompt_text, str) or not prompt_text.strip():
            raise APIError(400, "'prompt' must be a non-empty string")
        prompt, hits = await asyncio.to_thread(service.prompt_for, [{"role": "user", "content": prompt_text}])
        slot = await service.generation_slot()
        try:
            text, n_prompt, n_done, finish = await asyncio.to_thread(service.generate, prompt,
                                                                     requested_tokens(body, cfg), bool(hits))
        finally:
            slot.release()
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": service.model_id, "choices": [{"index": 0, "text": text, "finish_reason": finish,
                                                        "logprobs": None}],
                "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_done, "total_tokens": n_prompt + n_done},
                "lte": {"edits": edits_used(hits)}}

    @app.post("/v1/edits", dependencies=guard)
    async def add_edits(request: Request):
        edits = parse_edits(await json_body(request))

        def write():
            with service.write_lock:
                return service.editor.store.add(edits, progress=False)

        report = await asyncio.to_thread(write)
        return {"added": report.added, "skipped": report.skipped, "superseded": report.superseded,
                "ids": [edit.id for edit in edits]}

    @app.get("/v1/edits", dependencies=guard)
    def list_edits(offset: int = 0, limit: int = 50, history: bool = False) -> dict:
        if offset < 0 or not 1 <= limit <= 1000:
            raise APIError(400, "offset must be ≥ 0 and limit between 1 and 1000")
        stored = service.editor.store.list(history=history)
        page_items = stored[offset: offset + limit]
        return {"object": "list", "total": len(stored), "offset": offset,
                "data": [{**s.edit.to_dict(), "status": s.status, "superseded_by": s.superseded_by}
                         for s in page_items]}

    @app.get("/v1/edits/{edit_id}", dependencies=guard)
    def get_edit(edit_id: str) -> dict:
        stored = service.editor.store.get(edit_id)
        if stored is None:
            raise APIError(404, f"no edit with id {edit_id}", code="not_found")
        return {**stored.edit.to_dict(), "status": stored.status, "superseded_by": stored.superseded_by}

    @app.delete("/v1/edits/{edit_id}", dependencies=guard)
    def delete_edit(edit_id: str) -> dict:
        with service.write_lock:
            if not service.editor.store.delete(edit_id):
                raise APIError(404, f"no edit with id {edit_id}", code="not_found")
        return {"id": edit_id, "deleted": True}

    @app.post("/v1/edits/search", dependencies=guard)
    async def search(request: Request):
        body = await json_body(request)
        query = body.get("query") if isinstance(body, dict) else None
        k = body.get("k", 3) if isinstance(body, dict) else 3
        if not isinstance(query, str) or not query.strip() or not isinstance(k, int) or not 1 <= k <= 50:
            raise APIError(400, "'query' must be a non-empty string and 'k' an integer from 1 to 50")
        hits = await asyncio.to_thread(service.editor.store.search, query, k)
        return {"object": "list", "threshold": service.editor.store.threshold,
                "data": [{**h.edit.to_dict(), "score": h.score} for h in hits]}

    return app


def serve(service: Service) -> None:
    import uvicorn

    uvicorn.run(create_app(service), host=service.cfg.host, port=service.cfg.port, log_level="info")
