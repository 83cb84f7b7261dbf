#!/usr/bin/env bash
# What the full benchmark needs beyond qemu-tests/setup.sh: matplotlib for the plot that
# `bench.py --readme` draws. The quick mode (CI) draws no plot and does not need it.
set -euo pipefail
cd "$(dirname "$0")/.."
qemu-tests/setup.sh
python3 -c 'import matplotlib' 2>/dev/null || python3 -m pip install --quiet matplotlib
python3 -c 'import matplotlib'
