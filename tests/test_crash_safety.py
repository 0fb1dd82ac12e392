"""A store writer killed at any point of add, supersede, delete, restore or clear leaves a store that reopens whole:
every current edit has its keys, no key without a current edit, one current edit per fact, and re-running the
operation ends where an uninterrupted run ends. The kills happen in `tests/crash_campaign.py` (its own process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def test_a_writer_killed_at_each_of_200_kill_points_leaves_a_store_that_reopens_whole(tmp_path):
    done = subprocess.run([sys.executable, "-m", "tests.crash_campaign", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=1800, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["violations"] == []
    assert summary["kill_points"] >= 200 and set(summary["per_operation"]) == {"add", "supersede", "delete",
                                                                               "restore", "clear"}


def test_without_repair_a_killed_writer_leaves_a_current_edit_without_keys(tmp_path):
    """The campaign sees a broken store: with the repair on open disabled, a kill after the records of a restore
    and before its keys leaves a current edit that no search can find."""
    done = subprocess.run([sys.executable, "-c", "from retrieval.store import EditStore; EditStore.repair = "
                           "lambda self: 0; from tests.crash_campaign import main; "
                           f"main(['--out', {str(tmp_path)!r}, '--ops', 'restore', '--limit', '2'])"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["kill_points"] == 2 and any("current_without_keys=('" in v for v in summary["violations"])
