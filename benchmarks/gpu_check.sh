#!/usr/bin/env bash
# The GPU checks in one run (for the device machine; CPU-safe): training, operator learning and
# sampling throughput at the GPU profile's settings (bf16, compile, batch 256) against the
# settings before (fp32, batch 64, eager), in TFLOP/s and share of the chip's bf16 peak.
#   bash benchmarks/gpu_check.sh [extra prior_throughput.py arguments]
set -uo pipefail
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-16}
out=${OUT:-.bench/gpu_check}
mkdir -p "$out"
PY=${PY:-python3}
"$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
timeout ${CHECK_TIMEOUT:-480} "$PY" benchmarks/prior_throughput.py --params params-gpu.yaml --domains deblur clean \
  --baseline --tasks deblur --steps ${STEPS:-30} "$@" 2>&1 | tee "$out/prior_throughput.txt"
