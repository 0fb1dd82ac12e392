"""Helpers the subcommands share (kept here so no command imports `lte.cli`, which imports them all)."""

from __future__ import annotations

import json


def print_json(value) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))

