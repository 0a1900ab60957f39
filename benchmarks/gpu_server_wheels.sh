#!/usr/bin/env bash
# Adds to .whl/ (../shared/gpu/wheels.sh fills it) what an MLflow tracking server needs on a GPU
# machine without network beyond mlflow-skinny: the full mlflow wheel and the few packages its server
# imports that such a machine may lack (found by starting `python3.12 -m mlflow server` from .whl/
# alone on a bare Python 3.12). About 14 MB; .whl/ stays under the 64 MiB a GPU call carries.
# bench-batch's "tracking server" row uses it; without it that row says it was not measured.
set -euo pipefail
dest=${1:-.whl}
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform any -d "$dest" \
  mlflow==3.17.2 werkzeug click annotated-doc anyio h11 sniffio cloudpickle requests urllib3 certifi idna \
  charset-normalizer 2>&1 | grep -v '^WARNING: Location' || true
echo "$(ls "$dest"/*.whl | wc -l) wheels, $(du -sh "$dest" | cut -f1) in $dest"
