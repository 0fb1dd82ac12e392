"""`lte serve`: the OpenAI-compatible server with live edits and a web page."""

from __future__ import annotations

import logging
import os

from lte.errors import InputError
from lte.models import load_model

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
    parser.set_defaults(handler=run)


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def run(args, settings) -> int:
    from lte.lte_editor import LTEConfig, LTEEditor
    from lte.server import ServerConfig, Service, serve

    cfg = ServerConfig(host=args.host, port=args.port, api_key=args.api_key or os.environ.get("LTE_API_KEY") or None,
                       max_body_bytes=args.max_body_bytes, max_queue=args.max_queue)
    if cfg.host not in LOOPBACK and cfg.api_key is None:
        if not args.insecure:
            raise InputError(f"--host {cfg.host} without --api-key would let anyone who reaches the port read and "
                             "change the edits; set --api-key KEY (or LTE_API_KEY), or pass --insecure")
        log.warning("lte serve: listening on %s with no API key (--insecure)", cfg.host)
    editor = LTEEditor.from_config(settings, load_model(settings.model, settings.home), LTEConfig(k=args.k),
                                   private_store=False)
    serve(Service(editor, cfg))
    return 0
