#!/usr/bin/env bash
# Ray for a GPU machine without network, packed to fit one GPU call's carry (64 MiB): Ray's wheel
# alone is 79 MB, 32 MB of it the Java workers' jar. This installs Ray (the version this checkout's
# venv has) and the packages it imports that such a machine may lack, for CPython 3.12 on x86-64
# Linux, drops what nst never starts (Java, RLlib, Serve, Data, Train, Tune, LLM, the dashboard's web
# client), and packs the rest as .ray/site.tar.xz (about 30 MB). On the GPU machine, after
# .whl/env.sh, in a call that carries .ray (.whl is left there by an earlier call on the same warm
# machine; both together are over the carry):
#   tar -xJf .ray/site.tar.xz -C /tmp/site
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-.ray}
version=$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("ray"))')
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
platforms=(--python-version 3.12 --implementation cp --only-binary=:all: --platform manylinux2014_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform any)
python3 -m pip download -q --no-deps "${platforms[@]}" -d "$work/wheels" "ray==$version" msgpack jsonschema \
  jsonschema-specifications referencing rpds-py attrs 2>&1 | grep -v '^WARNING: Location' || true
python3 -m pip install -q --no-deps --no-compile "${platforms[@]}" --target "$work/site" "$work"/wheels/*.whl 2>&1 \
  | grep -v '^WARNING: Location' || true
rm -rf "$work/site/bin" "$work/site/ray/jars" "$work/site/ray/rllib" "$work/site/ray/serve" "$work/site/ray/data" \
  "$work/site/ray/train" "$work/site/ray/tune" "$work/site/ray/llm" "$work/site/ray/dashboard/client"
mkdir -p "$dest"
tar -cJf "$dest/site.tar.xz" -C "$work/site" .
echo "ray $version for CPython 3.12: $(du -sh "$dest/site.tar.xz" | cut -f1) in $dest/site.tar.xz"
