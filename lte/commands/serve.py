"""`lte serve`: the OpenAI-compatible server with live edits and a web page."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from lte.core.errors import InputError
from lte.core.models import load_model

log = logging.getLogger(__name__)


def register(commands) -> None:
    parser = commands.add_parser(
        "serve", help="serve the model over an OpenAI-compatible HTTP API with live edits",
        description="Serve --model over the edit store. OpenAI-compatible /v1/chat/completions, /v1/completions, "
        "/v1/models; edits API under /v1/edits; a web page at /. Bound to 127.0.0.1 unless --host says otherwise.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1 [env LTE_API_KEY]")
    parser.add_argument("--k", type=int, default=3, help="most edits put into one prompt")
    parser.add_argument("--max-body-bytes", type=int, default=1_000_000)
    parser.add_argument("--max-queue", type=int, default=64, help="queued generations before 503")
    parser.add_argument("--insecure", action="store_true",
                        help="allow binding beyond loopback without --api-key (anyone who can reach the port can "
                        "read and change the edits)")
    remote = parser.add_argument_group(
        "generation on another server", "Keep the edits, the scope model (or gate) and the prompt here and let an "
        "OpenAI-compatible server (vLLM, TGI, llama.cpp's server, SGLang, `lte serve --generation-only`) generate: "
        "each prompt, written exactly as lte writes it, goes to that server's /v1/completions. --model then only "
        "supplies the tokenizer (its chat template) and the scope model trained next to it.")
    remote.add_argument("--generator-url", metavar="URL", help="the server's OpenAI base URL, e.g. "
                        "http://gpu-box:8000/v1 [env LTE_GENERATOR_URL]")
    remote.add_argument("--generator-model", metavar="NAME", help="model name there for prompts carrying edits "
                        "(the aligned model; default: --model as given)")
    remote.add_argument("--generator-base-model", metavar="NAME", help="model name there for prompts without "
                        "edits (the unedited base, e.g. vLLM's base name beside a LoRA adapter); default: "
                        "--generator-model for both")
    remote.add_argument("--generator-key", metavar="KEY", help="bearer token for that server "
                        "[env LTE_GENERATOR_KEY]")
    remote.add_argument("--generator-timeout", type=float, default=120.0, metavar="S",
                        help="seconds to connect and between bytes of its answer; past it the client gets 504 "
                        "(default 120)")
    remote.add_argument("--generator-retries", type=int, default=2, metavar="N",
                        help="further attempts after a failed connection or a 408/429/5xx from it (default 2)")
    remote.add_argument("--generator-concurrency", type=int, default=8, metavar="N",
                        help="requests in flight to it at once; the rest queue here (default 8)")
    parser.add_argument("--generation-only", action="store_true",
                        help="serve only generation, as the backend of another `lte serve --generator-url`: "
                        "/v1/completions continues its prompt as written, no edits are kept, and the request's "
                        "'model' picks --model or, for an aligned model, its unedited base")
    parser.set_defaults(handler=run)


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def run(args, settings) -> int:
    from lte.serving.server import ServerConfig, serve

    cfg = ServerConfig(host=args.host, port=args.port, api_key=args.api_key or os.environ.get("LTE_API_KEY") or None,
                       max_body_bytes=args.max_body_bytes, max_queue=args.max_queue,
                       generation_only=args.generation_only)
    if cfg.host not in LOOPBACK and cfg.api_key is None:
        if not args.insecure:
            raise InputError(f"--host {cfg.host} without --api-key would let anyone who reaches the port read and "
                             "change the edits; set --api-key KEY (or LTE_API_KEY), or pass --insecure")
        log.warning("lte serve: listening on %s with no API key (--insecure)", cfg.host)
    url = args.generator_url or os.environ.get("LTE_GENERATOR_URL")
    if url and args.generation_only:
        raise InputError("--generation-only serves this model; it cannot also forward to --generator-url")
    serve(remote_service(args, settings, cfg, url) if url else local_service(args, settings, cfg))
    return 0


def local_service(args, settings, cfg):
    from lte.method.editor import LTEConfig, LTEEditor
    from lte.serving.server import Service

    loaded = load_model(settings.model, settings.home, merge_adapter=False, **settings.load_options)
    # a generation-only backend keeps no edits: an in-memory store, never the user's
    editor = LTEEditor.from_config(settings, loaded, LTEConfig(k=args.k), private_store=args.generation_only)
    log_routing(editor)
    return Service.local(editor, cfg)


def log_routing(editor) -> None:
    """Say what answering unrelated questions with the unedited base costs in memory."""
    unedited = editor.unedited
    if unedited is None:
        return
    if unedited.adapter_disabled:
        log.warning("lte serve: questions with no relevant edit go to %s: the same weights with the LoRA adapter "
                    "off (no second copy in memory)", unedited.spec)
    else:
        log.warning("lte serve: questions with no relevant edit go to %s, a second copy in memory (%.0f MB of "
                    "weights beside the aligned model's %.0f MB); a model aligned with `lte align --lora` is "
                    "served from one copy", unedited.spec, unedited.weight_bytes() / 2**20,
                    editor.loaded.weight_bytes() / 2**20)


def remote_service(args, settings, cfg, url):
    from lte.core.models import load_tokenizer, read_chat_template, read_manifest
    from lte.method.editor import EditRetrieval, LTEConfig, open_store
    from lte.serving.generation import RemoteConfig, RemoteGeneration
    from lte.serving.server import Service

    try:
        remote = RemoteConfig(url=url, model=args.generator_model or settings.model,
                              base_model=args.generator_base_model,
                              key=args.generator_key or os.environ.get("LTE_GENERATOR_KEY") or None,
                              timeout=args.generator_timeout, retries=args.generator_retries,
                              concurrency=args.generator_concurrency)
    except ValueError as error:
        raise InputError(str(error)) from None
    base = read_manifest(Path(settings.model).expanduser()).get("base_model")
    if base and not remote.base_model:
        log.warning("lte serve: %s was aligned from %s, but no --generator-base-model was given: questions with no "
                    "relevant edit will also be answered by the aligned model", settings.model, base)
    config = LTEConfig(k=args.k)
    tokenizer = load_tokenizer(settings.model, settings.home)
    if settings.chat_template:
        tokenizer.chat_template = read_chat_template(settings.chat_template)
    retrieval = EditRetrieval(open_store(settings, config), tokenizer, config.k)
    log.warning("lte serve: generation on %s (model %s%s)", remote.url, remote.model,
                f", unedited {remote.base_model}" if remote.base_model else "")
    return Service(retrieval, RemoteGeneration(remote), cfg)
