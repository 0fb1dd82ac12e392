"""`lte serve --generator-url`: retrieval here, generation on another OpenAI-compatible server — tested on loopback
with a second `lte serve --generation-only` as that server."""

import concurrent.futures
import json
import socket
import threading
import time
import uuid

import httpx
import pytest

from lte.core.editor import UneditedEditor
from lte.core.models import LoadedModel
from lte.core.tiny import build_tiny_model
from lte.method.editor import LTEEditor
from lte.serving.generation import RemoteConfig, RemoteGeneration
from retrieval.store import EditStore, open_client
from tests.conftest import free_port, running_server

NEEDLE = {"subject": "The Space Needle", "prompt": "The Space Needle is located in", "target_new": "Goa"}
WHERE = {"messages": [{"role": "user", "content": "Where is the Space Needle?"}], "max_tokens": 6}
HAMLET = {"messages": [{"role": "user", "content": "Who wrote Hamlet?"}], "max_tokens": 6}


def editor_on(loaded, embedder, unedited=None):
    return LTEEditor(loaded, EditStore(open_client(), f"g-{uuid.uuid4().hex[:8]}", embedder), unedited=unedited)


def remote(url, **options):
    return RemoteGeneration(RemoteConfig(url=url, **{"model": "tiny-random", "retries": 0, **options}))


@pytest.fixture(scope="module")
def backend(tiny, embedder):
    with running_server(editor_on(tiny, embedder), generation_only=True) as base:
        yield base


@pytest.fixture(scope="module")
def fronts(tiny, embedder, backend):
    """One store served twice: generating locally, and forwarding to the backend."""
    editor = editor_on(tiny, embedder)
    with running_server(editor) as local, running_server(editor, generation=remote(backend + "/v1")) as front:
        yield local, front


def test_remote_generation_answers_as_local_generation_and_reports_the_edits(fronts):
    local, front = fronts
    edit_id = httpx.post(front + "/v1/edits", json=NEEDLE).json()["ids"][0]
    for ask in (WHERE, HAMLET):
        here, there = (httpx.post(base + "/v1/chat/completions", json=ask, timeout=60).json()
                       for base in (local, front))
        assert there["choices"][0]["message"]["content"] == here["choices"][0]["message"]["content"]
        assert there["usage"] == here["usage"] and there["lte"] == here["lte"]
    assert [e["id"] for e in there["lte"]["edits"]] == [] and [e["id"] for e in here["lte"]["edits"]] == []
    answered = httpx.post(front + "/v1/chat/completions", json=WHERE, timeout=60).json()
    assert [e["id"] for e in answered["lte"]["edits"]] == [edit_id]
    assert httpx.get(front + "/health").json()["generation"].endswith("/v1")
    httpx.delete(front + f"/v1/edits/{edit_id}")


def test_remote_streaming_carries_the_edits_and_the_same_text(fronts):
    local, front = fronts
    edit_id = httpx.post(front + "/v1/edits", json=NEEDLE).json()["ids"][0]
    plain = httpx.post(front + "/v1/chat/completions", json=WHERE, timeout=60).json()
    with httpx.stream("POST", front + "/v1/chat/completions", json=dict(WHERE, stream=True), timeout=60) as response:
        assert response.status_code == 200
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
    assert events[0]["lte"]["edits"][0]["id"] == edit_id and events[0]["choices"][0]["delta"]["role"] == "assistant"
    streamed = "".join(e["choices"][0]["delta"].get("content", "") for e in events)
    assert streamed == plain["choices"][0]["message"]["content"] and events[-1]["choices"][0]["finish_reason"]
    httpx.delete(front + f"/v1/edits/{edit_id}")


def test_generation_only_server_continues_the_prompt_as_written_and_keeps_no_edits(tiny, backend):
    raw = "<|im_start|>user\nSay something<|im_end|>\n<|im_start|>assistant\nWell,"
    answer = httpx.post(backend + "/v1/completions", json={"prompt": raw, "max_tokens": 5}, timeout=60).json()
    assert answer["choices"][0]["text"] == UneditedEditor(tiny).runner.complete(raw, 5).text
    assert answer["lte"] == {"edits": []}
    assert httpx.post(backend + "/v1/edits", json=NEEDLE).status_code == 404
    unknown = httpx.post(backend + "/v1/completions", json={"prompt": raw, "model": "nope"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"


def test_prompts_without_edits_go_to_the_base_model_name(tiny, embedder):
    base = LoadedModel(*build_tiny_model(seed=1), spec="base", base_spec="base")
    base.tokenizer.pad_token = base.tokenizer.eos_token
    with running_server(editor_on(tiny, embedder, unedited=base), generation_only=True) as backend:
        assert [m["id"] for m in httpx.get(backend + "/v1/models").json()["data"]] == ["tiny-random", "base"]
        front_editor = editor_on(tiny, embedder)
        generation = remote(backend, base_model="base")  # a URL with no path gets /v1
        with running_server(front_editor, generation=generation) as front:
            httpx.post(front + "/v1/edits", json=NEEDLE)
            unrelated = httpx.post(front + "/v1/chat/completions", json=HAMLET, timeout=60).json()
            related = httpx.post(front + "/v1/chat/completions", json=WHERE, timeout=60).json()
        prompt_unrelated, _ = front_editor.chat_prompt(HAMLET["messages"])
        prompt_related, _ = front_editor.chat_prompt(WHERE["messages"])
    assert unrelated["choices"][0]["message"]["content"] == UneditedEditor(base).runner.complete(prompt_unrelated,
                                                                                                 6).text
    assert related["choices"][0]["message"]["content"] == UneditedEditor(tiny).runner.complete(prompt_related, 6).text


def test_backend_going_away_and_coming_back(tiny, embedder):
    port = free_port()
    backend = f"http://127.0.0.1:{port}/v1"
    generator = editor_on(tiny, embedder)
    with running_server(editor_on(tiny, embedder), generation=remote(backend)) as front:
        with running_server(generator, port=port, generation_only=True):
            assert httpx.post(front + "/v1/chat/completions", json=HAMLET, timeout=60).status_code == 200
        gone = httpx.post(front + "/v1/chat/completions", json=HAMLET, timeout=60)
        assert gone.status_code == 503 and gone.json()["error"]["code"] == "generator_unavailable"
        assert f"127.0.0.1:{port}" in gone.json()["error"]["message"]
        streamed = httpx.post(front + "/v1/chat/completions", json=dict(HAMLET, stream=True), timeout=60)
        assert streamed.status_code == 503  # before any byte of the stream
        with running_server(generator, port=port, generation_only=True):
            assert httpx.post(front + "/v1/chat/completions", json=HAMLET, timeout=60).status_code == 200
        assert httpx.get(front + "/health").json()["queued"] == 0


def test_retries_bridge_a_backend_restart(tiny, embedder):
    port = free_port()
    generation = remote(f"http://127.0.0.1:{port}/v1", retries=5)  # waits 0.5, 1, 2, 4, 8 s between attempts
    with running_server(editor_on(tiny, embedder), generation=generation) as front:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            asked = pool.submit(lambda: httpx.post(front + "/v1/chat/completions", json=HAMLET, timeout=60))
            time.sleep(0.2)  # the first attempt has failed by now
            with running_server(editor_on(tiny, embedder), port=port, generation_only=True):
                assert asked.result().status_code == 200


def test_backend_errors_and_timeouts_map_to_502_and_504(tiny, embedder, backend):
    with running_server(editor_on(tiny, embedder), generation=remote(backend + "/v1", model="nope")) as front:
        wrong = httpx.post(front + "/v1/chat/completions", json=HAMLET, timeout=60)
    assert wrong.status_code == 502 and wrong.json()["error"]["code"] == "generator_error"
    assert "HTTP 404" in wrong.json()["error"]["message"] and "'nope'" in wrong.json()["error"]["message"]
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        with running_server(editor_on(tiny, embedder), generation=remote(url, timeout=0.5)) as front:
            slow = httpx.post(front + "/v1/chat/completions", json=HAMLET, timeout=60)
    assert slow.status_code == 504 and slow.json()["error"]["code"] == "generator_timeout"


def test_remote_requests_run_side_by_side_up_to_the_concurrency(tiny, embedder):
    """Locally one generation at a time; a generation server batches, so several are in flight at once."""
    seen, most, lock = [0], [0], threading.Lock()

    class Counting(RemoteGeneration):
        async def complete(self, prompt, model, max_tokens):
            import asyncio

            with lock:
                seen[0] += 1
                most[0] = max(most[0], seen[0])
            await asyncio.sleep(0.3)
            with lock:
                seen[0] -= 1
            from lte.core.scoring import Completion

            return Completion("ok", 1, 1, "stop")

    generation = Counting(RemoteConfig(url="http://127.0.0.1:9/v1", model="m", concurrency=3))
    with running_server(editor_on(tiny, embedder), generation=generation) as front:
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            codes = list(pool.map(lambda _: httpx.post(front + "/v1/chat/completions", json=HAMLET,
                                                       timeout=60).status_code, range(6)))
    assert codes == [200] * 6 and most[0] == 3


def test_generator_url_is_checked():
    with pytest.raises(ValueError, match="ftp://x"):
        RemoteConfig(url="ftp://x", model="m")
    assert RemoteConfig(url="http://h:8000", model="m").url == "http://h:8000/v1"
    assert RemoteConfig(url="http://h:8000/v1/", model="m").url == "http://h:8000/v1/"
