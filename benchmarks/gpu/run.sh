#!/usr/bin/env bash
# GPU check NAME (chain_resnet34, deploy_resnet56, fmc_paper, speed_resnet56: benchmarks/gpu/NAME.py) at full size on the
# device (see benchmarks/gpu/README.md). On the GPU machine, from the project root:
#   source .device/setup.sh || exit 1; set -o pipefail; bash benchmarks/gpu/run.sh NAME 2>&1 | tee LOG
# Results go to ${OUT:-/tmp/results}/NAME (summary.json, summary.md, the run folder), or to DEST if given.
set -euo pipefail
NAME="${1:?usage: benchmarks/gpu/run.sh NAME [DEST]}"
SCRIPT="benchmarks/gpu/${NAME}.py"
[[ -f "$SCRIPT" ]] || { echo "run.sh: no $SCRIPT; NAME is one of: $(cd benchmarks/gpu && ls *.py | grep -v common | sed 's/\.py$//' | tr '\n' ' ')" >&2; exit 2; }
DEST="${2:-${OUT:-/tmp/results}/${NAME}}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
lscpu | grep "Model name" || true
date -u
timeout 540 python3 "$SCRIPT" "$DEST" --device cuda
