"""Servers the shared-deployment tests start themselves: a PostgreSQL cluster in a temporary folder, a Chroma
server, `lte serve` replicas. Each is a context manager that stops what it started."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port


def postgres_binary(name: str) -> str | None:
    """A PostgreSQL server program on PATH or where Debian installs it (/usr/lib/postgresql/N/bin)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def as_server_user(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run it as the `postgres` user there."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A fresh PostgreSQL cluster on a free loopback port; yields its SQLAlchemy URL. Skips where PostgreSQL is
    not installed (`.ci/run` installs Debian's)."""
    initdb, pg_ctl = postgres_binary("initdb"), postgres_binary("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    folder = Path(tempfile.mkdtemp(prefix="lte-pg-"))  # not under pytest's tmp: the server user must reach it
    data, port = folder / "data", free_port()
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    subprocess.run(as_server_user([initdb, "-D", str(data), "-U", "lte", "--auth=trust", "-E", "UTF8"]),
                   check=True, capture_output=True)
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off"
    subprocess.run(as_server_user([pg_ctl, "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w",
                                   "start"]), check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://lte@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(as_server_user([pg_ctl, "-D", str(data), "-m", "immediate", "stop"]), capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def wait_until_up(url: str, process: subprocess.Popen, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"{url} did not come up in {timeout_s:.0f} s")


def start_chroma(path: Path, port: int) -> subprocess.Popen:
    """`chroma run` on a loopback port, returned once it answers; skips the test where the CLI is missing."""
    chroma = shutil.which("chroma") or str(Path(sys.executable).parent / "chroma")
    if not Path(chroma).exists():
        pytest.skip("the chroma CLI is not installed")
    process = subprocess.Popen([chroma, "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until_up(f"http://127.0.0.1:{port}/api/v2/heartbeat", process)
    return process


@contextlib.contextmanager
def chroma_server(path: Path) -> Iterator[str]:
    """`chroma run` on a free loopback port; yields its URL."""
    port = free_port()
    process = start_chroma(path, port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def lte_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "lte.cli", *args]


@contextlib.contextmanager
def lte_serve(*options: str, env: dict | None = None) -> Iterator[str]:
    """`lte [options] serve` on a free loopback port; yields its base URL."""
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="lte-serve-", suffix=".log", delete=False)
    process = subprocess.Popen(lte_command(*options, "serve", "--port", str(port)), stdout=log, stderr=log, env=env)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/health", process)
        yield f"http://127.0.0.1:{port}"
    except RuntimeError as error:
        raise RuntimeError(f"{error}; its log: {Path(log.name).read_text()[-2000:]}") from None
    finally:
        process.terminate()
        process.wait(timeout=60)
        Path(log.name).unlink(missing_ok=True)
