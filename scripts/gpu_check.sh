#!/usr/bin/env bash
# Issue 10's GPU check as one command on a borrowed GPU machine (README: "GPU check"): the CUDA tests, then
# the throughput benchmark on CUDA (Chaplin and a 1080p25 clip, with and without GFPGAN). Needs .gpu/ from
# scripts/gpu_prepare.sh carried along. Logs and JSON go to $OUT (the device tool's folder) or .gpu/out.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-.gpu/out}"
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target .gpu/site .gpu/wheels/*.whl || exit 1
export PYTHONPATH="$PWD/src:$PWD/.gpu/site" PYTHONUNBUFFERED=1 LIPSYNC_TRACK_CACHE=false
[ -e ../shared ] || ln -s "$PWD/.gpu/shared" ../shared  # tests and benchmarks read ../shared
{ nvidia-smi -L; python3 -c "import torch, onnxruntime as o; print(torch.__version__, torch.cuda.is_available(), o.get_available_providers())"; } 2>&1 | tee "$OUT/machine.txt"
# Only the modules with CUDA tests are collected: the image lacks the API and browser tests' packages.
timeout "${GPU_TESTS_S:-240}" python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_align_crop.py \
    tests/test_encoders.py tests/test_fast_paths.py tests/test_metrics.py tests/test_models_loading.py \
    tests/test_pipeline_stages.py 2>&1 | tee "$OUT/gpu_tests.log"
tests_rc=${PIPESTATUS[0]}
timeout "${GPU_BENCH_S:-300}" python3 benchmarks/throughput.py --clips "${GPU_CLIPS:-chaplin,1080p}" --seconds "${GPU_SECONDS:-4}" \
    --rss-minutes 0.1,0.2 --no-peer --rounds 2 --enhance 2>&1 | tee "$OUT/throughput.log"
bench_rc=${PIPESTATUS[0]}
cp benchmarks/results/throughput.json "$OUT/" 2>/dev/null
echo "gpu tests rc=$tests_rc, throughput rc=$bench_rc"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
