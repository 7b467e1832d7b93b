#!/usr/bin/env bash
# The checks that need a CUDA GPU, as one short run for a lent GPU machine (the device tool's `run`):
#   1. the CUDA tests (tests/test_cuda.py: every deterministic quantizer matches the CPU, a run trains with
#      --device cuda and --amp bf16, a CUDA-trained model exports),
#   2. the training-step overhead of every recipe against float32 on ResNet-20 with random CIFAR-sized data at
#      batch 256, eager (every recipe) and torch.compile (the recipes with a GPU target), plus torch.ao's QAT peers.
#
# The GPU image has PyTorch, pytest, hypothesis, PyYAML, safetensors, scipy, tqdm, matplotlib, scikit-learn, onnx and
# onnxruntime but not jsonschema: carry its wheels. Here, in the repository root, before the run:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
#     jsonschema jsonschema-specifications referencing rpds-py attrs
# then run `bash benchmarks/gpu_checks.sh` with carry [".whl"] and a timeout_s of about 540.
# Results land in $OUT (the device tool brings them back): cuda-tests.log, overhead-cuda.{json,md},
# overhead-cuda-compiled.{json,md}.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/lowbit-gpu-checks}
mkdir -p "$OUT"
export PYTHONPATH=src
if [ -d .whl ]; then python3 -m pip install -q --no-index --find-links .whl jsonschema; fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"

timeout 240 python3 -m pytest -m cuda -q -p no:cacheprovider -x tests/test_cuda.py 2>&1 | tail -40 | tee "$OUT/cuda-tests.log"

cd benchmarks
timeout 180 python3 overhead.py --device cuda --model resnet20 --batch 256 --recipes all \
  --rounds 8 --steps 5 --warmup 10 --out "$OUT" --tag cuda 2>&1 | tail -25
timeout 240 python3 overhead.py --device cuda --model resnet20 --batch 256 --recipes lsq-w4a4,bc-det,banner-w8a8g8 \
  --compile --rounds 6 --steps 5 --warmup 10 --out "$OUT" --tag cuda-compiled 2>&1 | tail -25
