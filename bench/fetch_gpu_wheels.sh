#!/usr/bin/env bash
# Download, on a machine with network, the wheels that a GPU host without network lacks, into
# .whl/ (git-ignored). bench/gpu_check.sh installs them with `pip install --no-index --target`.
#
# Target: Python 3.12, x86-64 manylinux, an image that already holds torch, torchvision, numpy,
# scipy, scikit-learn, matplotlib, pandas, pillow, rich, httpx, fsspec, prometheus-client, pyyaml,
# shellingham, pytest, pytest-timeout and hypothesis. Versions are the ones installed in this
# project's .venv (the versions the test suite passes with), else the constraints.txt pin.
#
# faiss: the CPU wheel (~30 MB). faiss-gpu-cu12 is 48 MB and needs the CUDA 12 cuBLAS wheel
# (several hundred MB) on a CUDA 13 image, which does not fit a 64 MiB transfer; without it the GPU
# kNN path is torch's matrix product + top-k on CUDA (student_trainer.knn, backend "brute").
#
#   bash bench/fetch_gpu_wheels.sh            # -> .whl/*.whl
#   PY=python3 bash bench/fetch_gpu_wheels.sh # another python with pip to run `pip download`
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
DEST=${DEST:-.whl}
PKGS=(
  zarr numcodecs donfig google-crc32c faiss-cpu
  fastapi starlette uvicorn opentelemetry-api anyio
  pydantic pydantic-core annotated-types typing-inspection typing-extensions
  pydantic-settings python-dotenv python-multipart
  typer click annotated-doc mlxtend
)

version_of() {
  # Installed version in $PY's environment, else the constraints.txt pin, else empty.
  "$PY" - "$1" <<'EOF' 2>/dev/null || true
import importlib.metadata as m, pathlib, re, sys
name = sys.argv[1]
try:
    print(m.version(name))
except m.PackageNotFoundError:
    for line in pathlib.Path("constraints.txt").read_text().splitlines():
        hit = re.match(rf"^{re.escape(name)}==(\S+)", line.strip(), re.I)
        if hit:
            print(hit.group(1))
EOF
}

specs=()
for p in "${PKGS[@]}"; do
  v=$(version_of "$p")
  specs+=("${p}${v:+==$v}")
done

mkdir -p "$DEST"
rm -f "$DEST"/*.whl
echo "downloading ${#specs[@]} wheels for cp312 manylinux x86_64 into $DEST/:"
printf '  %s\n' "${specs[@]}"
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
           manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$tag")
done
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${platforms[@]}" -d "$DEST" "${specs[@]}"
ls -1 "$DEST"
du -ch "$DEST"/*.whl | tail -1
