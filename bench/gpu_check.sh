#!/usr/bin/env bash
# One prepared check for a lent GPU machine, in at most ~8 minutes:
#   0. environment (GPU, torch, CUDA, faiss GPU support)     -> {"bench": "env", ...}
#   1. the `gpu`-marked tests (CUDA agrees with CPU)         -> {"bench": "gpu_tests", ...}
#   2. precompute: ResNet-50 teacher at 224 px, bf16, generated images, bare forward vs pipeline
#   3. training throughput ResNet-50 -> ResNet-18 at 224 px: mocov2 vs disco cached vs online
#   4. kNN 1,000,000 bank x 10,000 queries x 128 d: FAISS CPU vs GPU (FAISS GPU index when
#      installed, torch matmul + top-k on CUDA always)
#   5. the HTTP service at C = 64 clients, ResNet-50 at 224 px, bf16
#   6. view rendering at 224 px: per-view reference vs batched renderer on CPU and CUDA, nvjpeg
#      decode, against a ResNet-50 teacher's bf16 forward rate (render_vs_teacher >= 1 wanted);
#      the batched CUDA renderer's bound vs the CPU reference is in the gpu tests (step 1)
#   7. where the time goes (bench/time_budget.py): per-view decode, render, teacher forward, store
#      write/read, and per-step training stages, with the model and the batched render on CUDA
# Every bench's JSON line is printed and appended to one file: $OUT/gpu_check.jsonl when $OUT is
# set, else runs/gpu_check.jsonl (or --out FILE). A bench that fails or runs past its time limit
# writes {"bench": NAME, "status": "failed", "rc": RC} instead, and the script exits 1.
#
#   bash bench/gpu_check.sh            # on the GPU host (make bench-gpu)
#   bash bench/gpu_check.sh --tiny     # on CPU, tiny sizes, about a minute (tests/test_gpu_check.py)
#
# Without network on the GPU host: run bench/fetch_gpu_wheels.sh here first; when .whl/ exists and
# the project's dependencies do not import, its wheels are installed into a --target directory
# (default /tmp/disco-site, env WHEEL_TARGET) that is put on PYTHONPATH. With this workplace's
# device tool: run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=540).
set -uo pipefail
cd "$(dirname "$0")/.."

TINY=0
JSONL=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tiny) TINY=1 ;;
    --out) JSONL="$2"; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (valid: --tiny, --out FILE)" >&2; exit 2 ;;
  esac
  shift
done
if [[ -z "$JSONL" ]]; then
  if [[ -n "${OUT:-}" ]]; then JSONL="$OUT/gpu_check.jsonl"; else JSONL="runs/gpu_check.jsonl"; fi
fi
mkdir -p "$(dirname "$JSONL")"
: >"$JSONL"
# The whole log beside the JSON lines (the device tool returns only the output's tail).
exec > >(tee "${JSONL%.jsonl}.log") 2>&1

if [[ -n "${PYTHON:-}" ]]; then PY="$PYTHON"
elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python
else PY=python3; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

DEPS="import zarr, numcodecs, faiss, fastapi, uvicorn, typer, pydantic_settings, multipart"
if ! "$PY" -c "$DEPS" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
  TARGET=${WHEEL_TARGET:-/tmp/disco-site}
  echo "== installing $(ls .whl/*.whl | wc -l) wheels from .whl/ into $TARGET"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$TARGET" .whl/*.whl || exit 1
  export PYTHONPATH="$PWD:$TARGET${PYTHONPATH#"$PWD"}"
fi
"$PY" -c "$DEPS" || { echo "missing Python packages (see bench/fetch_gpu_wheels.sh)" >&2; exit 1; }

CPUS=$(nproc)
FAILED=0
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# run NAME LIMIT_S CMD...: run a bench under a time limit, keep its last JSON line.
run() {
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s): $*"
  local start=$SECONDS rc line
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$TMP/$name.log"
  rc=${PIPESTATUS[0]}
  line=$(grep '^{' "$TMP/$name.log" | tail -n 1)
  if [[ $rc -ne 0 || -z "$line" ]]; then
    line="{\"bench\": \"$name\", \"status\": \"failed\", \"rc\": $rc}"
    FAILED=1
  fi
  echo "$line" >>"$JSONL"
  echo "== $name done in $((SECONDS - start)) s: $line"
}

# 0. environment
"$PY" - <<'EOF' | tee -a "$JSONL"
import json, os, torch
try:
    import faiss
    faiss_gpu = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    faiss_version = faiss.__version__
except ImportError:
    faiss_gpu, faiss_version = False, None
cuda = torch.cuda.is_available()
print(json.dumps({
    "bench": "env", "cuda": cuda, "gpu": torch.cuda.get_device_name(0) if cuda else None,
    "torch": torch.__version__, "cuda_runtime": torch.version.cuda, "faiss": faiss_version,
    "faiss_gpu": faiss_gpu, "cpus": os.cpu_count(),
}))
EOF

if [[ $TINY -eq 1 ]]; then
  DEV=cpu; PRE_PRECISION=(); SVC_PRECISION=fp32; W=0; TESTS=(tests/test_gpu.py)
  PRE=(--arch resnet18 --width 8 --dataset synthetic:32 --n 32 --views 2 --size 16
       --batch-size 32 --shard-size 32 --repeats 1)
  TRAIN=(--student tiny --teacher resnet18 --teacher-width 16 --dataset synthetic:64 --size 16
         --batch 16 --steps 2 --online-steps 1 --repeats 1 --views 2 --threads 1
         --min-flops-ratio 2)
  KNN=(--bank 2000 --queries 200 --dim 32 --repeats 1)
  SVC=(--clients 4 --requests 8 --rounds 1 --arch resnet18 --width 8 --size 32
       --max-batch-size 8 --threads 1 --prep-threads 1)
  RENDER=(--size 32 --images 4 --ref-views 8 --batches 8 --repeats 1 --no-teacher)
  TIME=(--skip-224 --repeats 1 --train-batch 16 --views 2)
  LIMITS=(120 120 240 60 120 60 120)
else
  DEV=cuda; PRE_PRECISION=(--precision bf16); SVC_PRECISION=bf16; TESTS=(tests)
  W=$(( CPUS - 1 < 15 ? CPUS - 1 : 15 ))
  PRE=(--arch resnet50 --width 64 --no-small-stem --dataset synthetic:512 --n 512 --views 4
       --size 224 --batch-size 256 --shard-size 256 --repeats 2)
  TRAIN=(--student resnet18 --teacher resnet50 --teacher-width 64 --dataset synthetic:1024
         --size 224 --batch 128 --steps 20 --online-steps 20 --repeats 2 --views 2 --precision bf16
         --min-flops-ratio 2)
  KNN=(--bank 1000000 --queries 10000 --dim 128 --k 20 --repeats 3 --skip-sklearn)
  SVC=(--clients 64 --requests 512 --rounds 2 --arch resnet50 --width 64 --size 224
       --max-batch-size 64 --threads 4 --prep-threads 8)
  RENDER=(--size 224 --images 32 --ref-views 32 --batches 64,256 --repeats 2)
  TIME=(--repeats 3 --images 16 --r50-batch 64 --threads 4)
  LIMITS=(90 100 120 60 90 90 90)
fi

# 1. gpu-marked tests: a JSON line from pytest's JUnit report.
echo "== gpu_tests (limit ${LIMITS[0]}s)"
timeout --kill-after=10 "${LIMITS[0]}" "$PY" -m pytest -q -m gpu -p no:cacheprovider \
  --junitxml="$TMP/junit.xml" "${TESTS[@]}" 2>&1 | tee "$TMP/gpu_tests.log"
rc=${PIPESTATUS[0]}
"$PY" - "$TMP/junit.xml" "$rc" <<'EOF' | tee -a "$JSONL"
import json, sys, xml.etree.ElementTree as ET
path, rc = sys.argv[1], int(sys.argv[2])
try:
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
except (OSError, ET.ParseError, AttributeError):
    n = {"tests": 0, "failures": 0, "errors": 1, "skipped": 0}
passed = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
ok = rc in (0, 5) and n["failures"] == n["errors"] == 0  # 5: nothing collected
print(json.dumps({"bench": "gpu_tests", "passed": passed, "failed": n["failures"],
                  "errors": n["errors"], "skipped": n["skipped"], "rc": rc,
                  "status": "ok" if ok else "failed"}))
EOF
if ! tail -n 1 "$JSONL" | grep -q '"status": "ok"'; then FAILED=1; fi

# 2-6. benches
run precompute "${LIMITS[1]}" "$PY" bench/precompute.py "${PRE[@]}" --workers "$W" \
  --device "$DEV" "${PRE_PRECISION[@]}"
run train_throughput "${LIMITS[2]}" "$PY" bench/train_throughput.py "${TRAIN[@]}" \
  --workers "$W" --device "$DEV"
run knn "${LIMITS[3]}" "$PY" bench/knn.py "${KNN[@]}" --device "$DEV"
run service "${LIMITS[4]}" "$PY" bench/service.py "${SVC[@]}" --device "$DEV" \
  --precision "$SVC_PRECISION"
run render "${LIMITS[5]}" "$PY" bench/render.py "${RENDER[@]}" --device "$DEV"
run time_budget "${LIMITS[6]}" "$PY" bench/time_budget.py "${TIME[@]}" --device "$DEV"

echo "== all JSON lines ($JSONL):"
cat "$JSONL"
exit "$FAILED"
