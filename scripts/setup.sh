#!/usr/bin/env bash
# Create .venv in the repo root and install lipsync with its test and offline extras.
# CPU machines get torch 2.13.0 (CPU build) first; GPU hosts install their CUDA torch into .venv
# before running this (see README), and this script leaves it alone.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${LIPSYNC_TORCH_SPEC:-torch==2.13.0}"

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
    .venv/bin/python -m pip install -q "$TORCH_SPEC"
fi
# setuptools<81: face_recognition_models still imports pkg_resources.
.venv/bin/python -m pip install -q "setuptools<81" -e ".[test,offline]"
.venv/bin/lipsync --version
