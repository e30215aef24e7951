#!/usr/bin/env bash
# Prepare, on this (CPU) machine, what a borrowed GPU machine lacks for scripts/gpu_check.sh: wheels for
# its Python (3.12, x86_64) of the packages its image does not have, pinned to the versions this venv runs,
# and the shared media and detector the check reads. All of it goes to .gpu/ (git-ignored), which the
# device tool carries (64 MiB at most, checked here). See the README's "GPU check".
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=.gpu
PY_VERSION="${GPU_PYTHON_VERSION:-3.12}"
SHARED="${SHARED_DIR:-../shared}"
# What the device image has (torch, numpy, onnx, onnxruntime, opencv, scipy, httpx, click, tqdm, filelock,
# prometheus-client, threadpoolctl, pytest, hypothesis) is not carried; the rest at this venv's versions
# (typing-extensions too: pydantic needs a recent one, and ours shadows the image's on PYTHONPATH).
NAMES="av pydantic pydantic-core pydantic-settings python-dotenv annotated-types typing-inspection silero-vad
fastapi starlette python-multipart uvicorn dramatiq redis anyio sniffio typing-extensions"
PINS=()
for name in $NAMES; do
    version=$(.venv/bin/python -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")
    PINS+=("$name==$version")
done
rm -rf "$DEST"
mkdir -p "$DEST/wheels" "$DEST/shared/media" "$DEST/shared/models"
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --implementation cp \
    --python-version "$PY_VERSION" --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$DEST/wheels" "${PINS[@]}"
for f in talking_chaplin_850x480_30fps.mp4 speech_44k_mono_5s.mp3 obama.jpg; do
    cp "$SHARED/media/$f" "$DEST/shared/media/"
done
cp "$SHARED/models/scrfd_2.5g_bnkps_320.onnx" "$DEST/shared/models/"
size=$(du -sm "$DEST" | cut -f1)
echo "prepared $DEST: $(ls "$DEST/wheels" | wc -l) wheels, ${size} MiB"
if [ "$size" -gt 60 ]; then
    echo "$DEST is ${size} MiB; the device tool carries 64 MiB with the working tree" >&2
    exit 1
fi
