#!/usr/bin/env bash
# Adds py-spy's wheel to .whl/ (../shared/gpu/wheels.sh fills it; 3.5 MB more) for `gpu_check.sh spy`:
# a sampling profile of the lr sweep's loop on the GPU (benchmarks/spy.py says why). .whl/env.sh installs
# it with the rest (its binary lands in /tmp/site/bin/py-spy).
set -euo pipefail
dest=${1:-.whl}
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 \
  --platform manylinux1_x86_64 -d "$dest" py-spy==0.4.3 2>&1 | grep -v '^WARNING: Location' || true
ls "$dest"/py_spy-*.whl
