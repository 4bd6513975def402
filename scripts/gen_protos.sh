#!/usr/bin/env bash
# Regenerates hfl/proto/v1 (messages, gRPC stubs and typed .pyi stubs) from protos/hfl/v1.
# Usage: scripts/gen_protos.sh [OUTDIR]   (default: hfl/proto; `make proto-check` diffs a fresh copy)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export PATH="$(dirname "$PY"):$PATH"
out=${1:-hfl/proto}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m grpc_tools.protoc -Iprotos \
  --python_out="$tmp" --grpc_python_out="$tmp" \
  --mypy_out="$tmp" --mypy_grpc_out="$tmp" \
  protos/hfl/v1/*.proto 2> >(grep -v "^Writing mypy" >&2)
mkdir -p "$out/v1"
rm -f "$out"/v1/*_pb2*.py "$out"/v1/*_pb2*.pyi
for f in "$tmp"/hfl/v1/*; do
  sed -e 's/^from hfl\.v1 import/from hfl.proto.v1 import/' \
      -e 's/^import hfl\.v1\./import hfl.proto.v1./' \
      -e 's/\bhfl\.v1\.\([a-z_]*_pb2\)\b/hfl.proto.v1.\1/g' \
      "$f" > "$out/v1/$(basename "$f")"
done
touch "$out/__init__.py" "$out/v1/__init__.py" "$out/py.typed"
