#!/usr/bin/env bash
# GPU check: benchmarks/gpu/deploy_resnet56.py at full size on the device (see benchmarks/gpu/README.md).
# On the GPU machine, from the project root:
#   source .device/setup.sh || exit 1; set -o pipefail; bash benchmarks/gpu/deploy_resnet56.sh 2>&1 | tee LOG
# Results go to ${OUT:-/tmp/results}/deploy_resnet56 (summary.json, summary.md, the run folder).
set -euo pipefail
DEST="${1:-${OUT:-/tmp/results}/deploy_resnet56}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
lscpu | grep "Model name" || true
date -u
timeout 540 python3 benchmarks/gpu/deploy_resnet56.py "$DEST" --device cuda
