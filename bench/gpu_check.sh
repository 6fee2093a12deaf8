#!/usr/bin/env bash
# One short check on a machine with an NVIDIA GPU (about 5 minutes): installs the pinned
# stack (torch 2.13.0 from PyPI is the CUDA build on linux/x86_64), then runs
# bench/gpu_check.py: the MiniLM FedSVD scenario under DP with 4 clients sharing the GPU,
# next to the same DP training in one plain PyTorch loop on the same GPU.
#   bash bench/gpu_check.sh            (on the GPU machine, from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_ROOT_USER_ACTION=ignore HF_HUB_OFFLINE=1
pip install -q torch==2.13.0 && pip install -q -e .
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible'"
python bench/gpu_check.py "$@"
# Every tensor of a client round on the GPU (OSFT bases, DP noise generators), then a
# 2-task OSFT stream under DP with both clients on the GPU (issue 13, item 4).
python -m pytest -q -m gpu tests/clients/test_devices.py
python bench/gpu_osft_stream.py
