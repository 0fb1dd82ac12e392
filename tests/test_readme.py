"""The README's commands, run as a newcomer would copy them, on the tiny model. Each substitution below says why
the command cannot run exactly as written here; everything else runs verbatim, in order, in one shell."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
TINY_ALIGN = " --max-steps 1 --in-scope 4 --out-of-scope 4 --linguistic 2 --describe 1 --no-scope"
SUBSTITUTIONS = [  # (pattern, replacement, why)
    (r"^\./install\.sh.*$", "", "CI runs install.sh itself before the tests"),
    (r"^source \.venv/bin/activate$", "", "the test's PATH already starts with the environment's bin folder"),
    (r"^(lte align .*)$", r"\1" + TINY_ALIGN, "the full alignment takes 26 min and its scope model 16 more"),
    (r"smollm2-135m-instruct", "tiny-random", "the tiny model's aligned folder is named after it"),
]
TRAINING_RECORD = {"subject": "The Space Needle", "prompt": "The Space Needle is located in", "target_new": "Goa",
                   "paraphrases": ["Where is the Space Needle?"]}


def section_commands(title: str) -> list[str]:
    """The command lines of the ```bash blocks in one README section, comments stripped."""
    text = README.read_text()
    body = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for block in re.findall(r"```bash\n(.*?)```", body, re.S) for line in block.splitlines()]
    return [re.sub(r"\s+#.*$", "", line) for line in lines if line.strip() and not line.startswith("#")]


def adapted(command: str) -> str:
    for pattern, replacement, _ in SUBSTITUTIONS:
        command = re.sub(pattern, replacement, command)
    return command


def test_the_install_and_quickstart_commands_run_as_written(tmp_path):
    from lte.core.catalog import TRAINING

    datasets = tmp_path / "datasets"  # the training splits by name, as tiny files where the real ones would lie
    for relative in TRAINING.values():
        (datasets / relative).parent.mkdir(parents=True, exist_ok=True)
        (datasets / relative).write_text(json.dumps([TRAINING_RECORD] * 3))
    commands = [adapted(c) for c in section_commands("Install") + section_commands("Quickstart")]
    assert any(c.startswith("lte align --data") for c in commands) and any(c.startswith("lte ask") for c in commands)
    env = {**os.environ, "HOME": str(tmp_path), "LTE_MODEL": "tiny-random", "LTE_DATASETS": str(datasets),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("LTE_HOME", None), env.pop("LTE_STORE", None)
    script = "set -euo pipefail\n" + "\n".join(c for c in commands if c)
    run = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert (tmp_path / ".cache/lte/aligned/tiny-random").is_dir()  # where the Quickstart's export points
    assert "Goa" in run.stdout  # `lte ask` prints the edit it used


def test_the_readme_test_command_is_the_one_ci_runs():
    """`lte serve` and the openai client of the Serve section run in tests/test_server.py."""
    (command,) = section_commands("Tests")
    assert command in (README.parent / ".ci" / "run").read_text()


def test_the_python_api_example_runs(tmp_path):
    text = (README.parent / "docs" / "architecture.md").read_text().split("## Python API", 1)[1]
    (code,) = re.findall(r"```python\n(.*?)```", text, re.S)[:1]
    env = {**os.environ, "LTE_MODEL": "tiny-random", "LTE_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    env.pop("LTE_STORE", None)
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
