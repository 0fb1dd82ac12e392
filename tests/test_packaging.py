"""A plain `pip install lte` (no extras) serves: the serving commands run with the train and bench extras'
packages absent, and the commands that need them say which extra to install."""

import os
import site
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXTRAS_ONLY = ("trl", "datasets", "matplotlib", "mpl_toolkits")  # what `lte[train]` and `lte[bench]` add


@pytest.fixture(scope="module")
def plain_install(tmp_path_factory):
    """This environment's packages without the extras' ones, as a folder on PYTHONPATH (run with `python -S`)."""
    folder = tmp_path_factory.mktemp("site")
    packages = Path(site.getsitepackages()[0])
    for entry in packages.iterdir():
        name = entry.name.split("-")[0].lower()
        if name not in EXTRAS_ONLY and entry.suffix != ".pth":
            (folder / entry.name).symlink_to(entry.resolve())
    (folder / "lte_data").symlink_to(ROOT / "data")  # what the editable install maps `lte_data` to
    return folder


def lte(plain_install, tmp_path, *args):
    env = {**os.environ, "PYTHONPATH": f"{plain_install}{os.pathsep}{ROOT}", "LTE_HOME": str(tmp_path / "home"),
           "LTE_MODEL": "tiny-random", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-S", "-m", "lte.cli", *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)


def test_ask_edit_and_serve_need_no_extra(plain_install, tmp_path):
    edits = tmp_path / "edits.jsonl"
    edits.write_text('{"subject": "The Space Needle", "prompt": "The Space Needle is located in", '
                     '"target_new": "Goa"}\n')
    assert lte(plain_install, tmp_path, "edit", "add", str(edits)).returncode == 0
    asked = lte(plain_install, tmp_path, "ask", "Where is the Space Needle?")
    assert asked.returncode == 0 and "Goa" in asked.stdout, asked.stderr[-2000:]
    served = lte(plain_install, tmp_path, "serve", "--help")
    assert served.returncode == 0 and "--generator-url" in served.stdout
    probe = subprocess.run([sys.executable, "-S", "-c", "import sys, lte.serving.server, lte.method.editor; "
                            f"print([m for m in {EXTRAS_ONLY!r} if m in sys.modules])"],
                           env={**os.environ, "PYTHONPATH": f"{plain_install}{os.pathsep}{ROOT}"},
                           capture_output=True, text=True, timeout=300)
    assert probe.stdout.strip() == "[]", probe.stderr[-2000:]


def test_align_without_the_train_extra_says_how_to_get_it(plain_install, tmp_path):
    run = lte(plain_install, tmp_path, "align", "--max-steps", "1")
    assert run.returncode == 2 and "pip install 'lte[train]'" in run.stderr
