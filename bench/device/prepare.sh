#!/usr/bin/env bash
# The device kit, made on a development machine (PyPI reachable), into bench/device/kit/
# (git-ignored; name it in the device tool's `carry`):
#   wheels/  the linux x86_64 wheels of exactly what orthofed needs and the accelerator
#            lacks (bench/device/wheel_list.py), at the tested versions, at most 48 MiB
#   cache/   tiny-bert's and the LLaMA checks' tokenizers (ORTHOFED_CACHE there: no hub)
# Then, on the accelerator, from the repository root: bash bench/device/run.sh
#   bash bench/device/prepare.sh                 (Python 3.12: the accelerator's)
#   KIT_PYTHON=3.11 bash bench/device/prepare.sh (the CI smoke: this machine's Python)
set -euo pipefail
cd "$(dirname "$0")/../.."
KIT=$(realpath -m "${KIT_DIR:-bench/device/kit}")
PYVER=${KIT_PYTHON:-3.12}
LIMIT_MIB=48
rm -rf "$KIT/wheels" && mkdir -p "$KIT/wheels" "$KIT/cache"
python bench/device/wheel_list.py --python "$PYVER" > "$KIT/wheels.txt"
platforms=()
for n in 17 24 27 28 31 34 35 39; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
python -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
  --implementation cp "${platforms[@]}" --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d "$KIT/wheels" -r "$KIT/wheels.txt"
ORTHOFED_CACHE="$KIT/cache" python -c "
from clients.models.decoders import smollm2_tokenizer_path
from clients.models.factory import tiny_bert_tokenizer_path
print(tiny_bert_tokenizer_path(), smollm2_tokenizer_path())" >/dev/null
# The tree travels without .git: the results name the commit the kit was made from.
{ git rev-parse HEAD 2>/dev/null || echo unknown; } | tr -d '\n' > "$KIT/commit.txt"
git diff --quiet HEAD 2>/dev/null || echo -n " (with uncommitted changes)" >> "$KIT/commit.txt"
count=$(ls "$KIT/wheels" | wc -l)
mib=$(du -sm "$KIT/wheels" | cut -f1)
echo "$KIT: $count wheels for Python $PYVER, $mib MiB (limit $LIMIT_MIB); cache $(du -sh "$KIT/cache" | cut -f1)"
if [ "$mib" -gt "$LIMIT_MIB" ]; then
  echo "prepare.sh: the wheels take $mib MiB, over the $LIMIT_MIB MiB a device call carries beside the tree" >&2
  exit 1
fi
