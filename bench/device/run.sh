#!/usr/bin/env bash
# The GPU checks (bench/device/checks.py), on the accelerator, from the repository root,
# with no network: the kit's wheels (bench/device/prepare.sh, on a development machine)
# go beside the machine's own packages with pip --no-index --no-deps --target, first on
# the path; the kit's cache gives the tokenizers (no hub). At most 8 minutes (--smoke:
# the same script on a CPU at tiny shapes, at most 7: CI's 2 busy cores). JSON and Markdown go to $OUT when
# it is set, else bench/results/.
#   device tool: run(command="bash bench/device/run.sh", carry=["bench/device/kit"])
#   CI smoke:    KIT_PYTHON=3.11 bash bench/device/prepare.sh && bash bench/device/run.sh --smoke
set -euo pipefail
cd "$(dirname "$0")/../.."
KIT=$(realpath -m "${KIT_DIR:-bench/device/kit}")
PY=${PYTHON:-python3}
LIMIT_S=480
[ "${1:-}" = --smoke ] && LIMIT_S=420
SITE=$(mktemp -d /tmp/orthofed-kit-site.XXXXXX)
CACHE=$(mktemp -d /tmp/orthofed-kit-cache.XXXXXX)
trap 'rm -rf "$SITE" "$CACHE"' EXIT
if ! ls "$KIT"/wheels/*.whl >/dev/null 2>&1; then
  echo "run.sh: no wheels in $KIT/wheels; make them first: bash bench/device/prepare.sh" >&2
  exit 2
fi
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" \
  "$KIT"/wheels/*.whl
cp -r "$KIT"/cache/. "$CACHE"/
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}" PATH="$SITE/bin:$PATH" \
  ORTHOFED_KIT_SITE="$SITE" ORTHOFED_CACHE="$CACHE" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 \
  FLWR_DISABLE_UPDATE_CHECK=1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
  --format=csv,noheader || true
timeout --signal=INT --kill-after=20 "$LIMIT_S" "$PY" bench/device/checks.py "$@"
