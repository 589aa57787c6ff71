#!/usr/bin/env bash
# `make docker-smoke`: build the service image and run it under docker compose, for real.
#
#   1. a Docker engine: start dockerd (as root) when none answers
#   2. base image local/python:3.11 (when missing): debootstrap a Debian bookworm minbase with
#      python3, python3-venv and ca-certificates from the mirror apt already uses; docker import
#   3. wheelhouse runs/docker/wheelhouse (when missing or when pyproject/constraints/EXTRAS
#      changed): `pip wheel -c constraints.txt '.[models]' setuptools` on the host
#   4. docker build --network host (build arg EXTRAS, default models), pip installing only from the
#      wheelhouse served on 127.0.0.1 (the host's registry access does not reach into a build here)
#   5. the demo teacher with DISCO_TOKEN set and DISCO_LOG_FORMAT=json: healthy (the healthcheck
#      needs no token), uid not 0, /v1/* refuses a missing token, one embedding, a store created on
#      the volume and written through, the weights cache writable, /metrics scraped and parsed,
#      the OpenAPI schema open, X-Request-ID echoed, every log line JSON with the access fields
#   6. a hub teacher: a random-initialised tiny DINOv2 saved with save_pretrained into a host folder
#      mounted at /models, served as hf:/models/dinov2-tiny with HF_HUB_OFFLINE=1 (and the token);
#      its embedding equals the host's in-process one
#   7. a broken and a missing checkpoint: the container exits once with one error line
# Idempotent: a second run reuses the base image, the wheelhouse, Docker's layer cache and the
# saved DINOv2 folder.
# Needs: docker.io docker-compose debootstrap (apt-get install -y ...), root for dockerd and
# debootstrap. Times of every stage go to runs/docker/times.json.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
CACHE=${DISCO_DOCKER_CACHE:-$ROOT/runs/docker}
BASE_IMAGE=${DISCO_BASE_IMAGE:-local/python:3.11}
IMAGE=${DISCO_IMAGE:-disco-cache:smoke}
PROJECT=${DISCO_SMOKE_PROJECT:-discosmoke}
EXTRAS=${DISCO_EXTRAS-models}
TOKEN=smoke-token-$RANDOM
PY=${PYTHON:-python3}
[ -x "$ROOT/.venv/bin/python" ] && PY=${PYTHON:-$ROOT/.venv/bin/python}
WHEELHOUSE=$CACHE/wheelhouse
mkdir -p "$CACHE"
declare -A T=()
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
log() { printf '[docker-smoke] %s\n' "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null; then COMPOSE=(docker-compose)
else die "no docker compose: apt-get install -y docker.io docker-compose debootstrap"; fi

# 1. engine ------------------------------------------------------------------------------------
if ! docker info >/dev/null 2>&1; then
    command -v dockerd >/dev/null || die "no dockerd: apt-get install -y docker.io"
    [ "$(id -u)" = 0 ] || die "no Docker engine answers, and starting dockerd needs root"
    log "starting dockerd (log: $CACHE/dockerd.log)"
    nohup dockerd >"$CACHE/dockerd.log" 2>&1 &
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || die "dockerd did not answer in 60 s (see $CACHE/dockerd.log)"
fi

# 2. base image --------------------------------------------------------------------------------
mirror() {  # the Debian mirror apt uses (deb822 .sources first, then sources.list)
    local uri
    uri=$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null \
          | awk '{print $2}' | grep -v security | head -n1 || true)
    [ -n "$uri" ] || uri=$(grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
          2>/dev/null | awk '{print $2}' | grep -v security | head -n1 || true)
    echo "${uri:-http://deb.debian.org/debian}"
}
if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    log "base image $BASE_IMAGE present (reused)"; T[base_s]=0
else
    command -v debootstrap >/dev/null || die "no debootstrap: apt-get install -y debootstrap"
    t0=$(now); rootfs=$CACHE/rootfs; rm -rf "$rootfs"
    log "debootstrap bookworm minbase from $(mirror)"
    nice debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$rootfs" "$(mirror)" >"$CACHE/debootstrap.log" 2>&1 \
        || die "debootstrap failed (see $CACHE/debootstrap.log)"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | docker import - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
    T[base_s]=$(since "$t0"); log "base image built in ${T[base_s]} s"
fi

# 3. wheelhouse --------------------------------------------------------------------------------
key=$( (cat pyproject.toml constraints.txt; echo "$EXTRAS") | sha256sum | cut -c1-16)
if [ -f "$WHEELHOUSE/.stamp-$key" ]; then
    log "wheelhouse present (reused)"; T[wheelhouse_s]=0
else
    t0=$(now); mkdir -p "$WHEELHOUSE"; rm -f "$WHEELHOUSE"/.stamp-*
    log "pip wheel -c constraints.txt '.[$EXTRAS]' setuptools -> $WHEELHOUSE"
    nice "$PY" -m pip wheel --quiet -c constraints.txt --wheel-dir "$WHEELHOUSE" ".[$EXTRAS]" 'setuptools>=68' \
        || die "pip wheel failed"
    touch "$WHEELHOUSE/.stamp-$key"
    T[wheelhouse_s]=$(since "$t0"); log "wheelhouse built in ${T[wheelhouse_s]} s"
fi

# 4. build -------------------------------------------------------------------------------------
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# A fixed port keeps the WHEELHOUSE_URL build argument, and so Docker's layer cache, stable.
WPORT=${DISCO_WHEELHOUSE_PORT:-38765}
if ! "$PY" -c "import socket,sys; s=socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1])))" "$WPORT" 2>/dev/null; then
    WPORT=$(free_port)
fi
"$PY" -m http.server "$WPORT" --bind 127.0.0.1 --directory "$WHEELHOUSE" >"$CACHE/wheel-server.log" 2>&1 &
WPID=$!
export COMPOSE_PROJECT_NAME=$PROJECT DISCO_IMAGE=$IMAGE DISCO_PUBLISH_PORT=$(free_port)
cleanup() {
    kill "$WPID" 2>/dev/null || true
    "${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
}
trap cleanup EXIT
t0=$(now)
log "docker build (base $BASE_IMAGE, wheels from 127.0.0.1:$WPORT)"
DOCKER_BUILDKIT=0 nice docker build --network host -t "$IMAGE" \
    --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg WHEELHOUSE_URL="http://127.0.0.1:$WPORT/" \
    --build-arg EXTRAS="$EXTRAS" \
    . >"$CACHE/build.log" 2>&1 || { tail -n 30 "$CACHE/build.log" >&2; die "docker build failed"; }
T[build_s]=$(since "$t0"); log "image built in ${T[build_s]} s"
kill "$WPID" 2>/dev/null || true
T[image_bytes]=$(docker image inspect -f '{{.Size}}' "$IMAGE")

# 5. run: the demo teacher behind a token, JSON logs ---------------------------------------------
wait_healthy() {  # $1 = stage name; prints the container id
    local cid state
    cid=$("${COMPOSE[@]}" ps -q teacher)
    [ -n "$cid" ] || die "$1: compose started no teacher container"
    state=starting
    for _ in $(seq 300); do
        state=$(docker inspect -f '{{.State.Status}}/{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$cid")
        case $state in
            running/healthy) break ;;
            exited/*|dead/*) "${COMPOSE[@]}" logs teacher >&2; die "$1: container stopped ($state)" ;;
        esac
        sleep 1
    done
    [ "$state" = running/healthy ] || { "${COMPOSE[@]}" logs teacher >&2; die "$1: not healthy ($state)"; }
    echo "$cid"
}
"${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
t0=$(now)
DISCO_TOKEN=$TOKEN DISCO_LOG_FORMAT=json "${COMPOSE[@]}" up -d --no-build teacher
CID=$(wait_healthy demo)
T[healthy_s]=$(since "$t0"); log "healthy with a token set, ${T[healthy_s]} s after up"

uid=$(docker exec "$CID" id -u)
[ "$uid" != 0 ] || die "the container runs as root"
docker exec "$CID" sh -c 'touch "$HF_HOME/.w" "$TORCH_HOME/.w" && rm "$HF_HOME/.w" "$TORCH_HOME/.w"' \
    || die "the weights cache (HF_HOME, TORCH_HOME) is not writable by uid $uid"
docker exec "$CID" disco store create /stores/smoke --dataset synthetic:4 --split all \
    --recipe digits --size 32 --views 2 --shard-size 4 >/dev/null \
    || die "cannot create a store on the volume as uid $uid"
# Store rows are a seeded permutation of the samples: ask the store which sample each row holds.
ROWS=$(docker exec "$CID" /opt/venv/bin/python -c \
    'from store.embedding_store import EmbeddingStore as E; print(",".join(map(str, E.open("/stores/smoke").manifest.indices)))') \
    || die "cannot read the store's rows"
URL=http://127.0.0.1:$DISCO_PUBLISH_PORT
PYTHONPATH=$ROOT "$PY" - "$URL" "$TOKEN" "$ROWS" <<'PYEOF' || die "demo teacher check failed"
import sys

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from store.datasets import open_dataset
from teacher_service.client import TeacherClient

url, token = sys.argv[1], sys.argv[2]
sample_of = [int(r) for r in sys.argv[3].split(",")]  # store row -> dataset sample
assert httpx.get(f"{url}/v1/model").status_code == 401, "no token must be refused on /v1/*"
assert httpx.get(f"{url}/openapi.json").json()["info"]["title"], "the schema is open"
r = httpx.get(f"{url}/readyz", headers={"X-Request-ID": "smoke-ready-1"})
assert r.status_code == 200 and r.headers["x-request-id"] == "smoke-ready-1", r.headers
with TeacherClient(url, token=token, timeout=60) as client:
    model = client.model()
    dataset = open_dataset("synthetic:4")
    one = client.embed([dataset.load(0)])
    assert one.shape == (1, model["embed_dim"]), one.shape
    assert abs(float(np.linalg.norm(one[0])) - 1) < 1e-2
    slots = [(i, v) for i in range(4) for v in range(2)]
    written = client.write_through(
        "smoke",
        [dataset.load(sample_of[i]) for i, _ in slots],
        [i for i, _ in slots],
        [v for _, v in slots],
    )
    info = client.store_info("smoke")
    assert info["written"] == 8 and info["missing_shards"] == [], info
    target = client.store_range("smoke", 0, 4)
    cos = float((target.reshape(-1, target.shape[-1]) * written).sum(1).min())
    assert cos >= 0.999, cos
metrics = {
    (s.name, tuple(sorted(s.labels.items()))): s.value
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text)
    for s in family.samples
}
names = {name for name, _ in metrics}
for want in ("disco_requests_total", "disco_images_embedded_total", "disco_batch_size_count",
             "disco_queue_seconds_count", "disco_inference_seconds_count",
             "disco_store_writes_total", "disco_queue_depth"):
    assert want in names, (want, sorted(names))
assert metrics[("disco_store_writes_total", ())] == 8
assert metrics[("disco_images_embedded_total", ())] >= 9
print(f"embedding {one.shape} from {model['arch']} on {model['device']}; 8 slots written "
      f"through, cosine to stored >= {cos:.5f}; {len(metrics)} metric samples scraped")
PYEOF
docker logs "$CID" >"$CACHE/demo.log" 2>&1
"$PY" - "$CACHE/demo.log" <<'PYEOF' || die "JSON log check failed (see $CACHE/demo.log)"
import json
import sys

lines = [line for line in open(sys.argv[1]) if line.strip()]
records = [json.loads(line) for line in lines]  # every line is one JSON object
access = [r for r in records if r.get("logger") == "teacher_service.access"]
embeds = [r for r in access if r["route"] == "/v1/embeddings" and r["status"] == 200]
assert embeds, access[-3:]
for key in ("request_id", "route", "status", "images", "queue_ms", "inference_ms", "ts"):
    assert key in embeds[0], (key, embeds[0])
assert any(r.get("request_id") == "smoke-ready-1" for r in access)
assert any(r["status"] == 401 for r in access)
print(f"{len(records)} log lines, all JSON; {len(access)} access lines")
PYEOF
"${COMPOSE[@]}" down -v --remove-orphans >/dev/null

# 6. a hub teacher from a mounted folder, offline ----------------------------------------------
MODELS=$CACHE/models
if [ ! -f "$MODELS/dinov2-tiny/config.json" ]; then
    mkdir -p "$MODELS"
    "$PY" - "$MODELS/dinov2-tiny" <<'PYEOF' || die "cannot save the tiny DINOv2"
import sys

import torch
from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

torch.manual_seed(0)
config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, image_size=32, patch_size=8)
Dinov2Model(config).eval().save_pretrained(sys.argv[1])
BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                  do_center_crop=True, resample=3).save_pretrained(sys.argv[1])
PYEOF
    chmod -R a+rX "$MODELS"
fi
t0=$(now)
DISCO_CHECKPOINTS=$MODELS DISCO_TEACHER=hf:/models/dinov2-tiny HF_HUB_OFFLINE=1 \
    DISCO_TOKEN=$TOKEN DISCO_LOG_FORMAT=json "${COMPOSE[@]}" up -d --no-build teacher
CID=$(wait_healthy hub)
T[hub_healthy_s]=$(since "$t0"); log "hub teacher healthy ${T[hub_healthy_s]} s after up"
PYTHONPATH=$ROOT HF_HUB_OFFLINE=1 "$PY" - "$URL" "$TOKEN" "$MODELS/dinov2-tiny" <<'PYEOF' \
    || die "hub teacher check failed"
import sys

from store.datasets import open_dataset
from store.views import render_center
from teacher_service.client import TeacherClient
from teacher_service.service.model import load_runtime

url, token, folder = sys.argv[1:4]
image = open_dataset("synthetic:4").load(1)
with TeacherClient(url, token=token, timeout=60) as client:
    model = client.model()
    served = client.embed([image])
assert model["source"] == "hf" and model["embed_dim"] == 32, model
local = load_runtime(f"hf:{folder}", device="cpu")
want = local.embed(render_center(image, local.recipe)[None])
cos = float((served * want).sum())
assert cos >= 0.999, cos
print(f"hub teacher {model['name']} (D={model['embed_dim']}) served offline; cosine to host {cos:.5f}")
PYEOF
docker logs "$CID" >"$CACHE/hub.log" 2>&1
"$PY" -c 'import json, sys; [json.loads(l) for l in open(sys.argv[1]) if l.strip()]' "$CACHE/hub.log" \
    || die "hub teacher: a log line is not JSON (see $CACHE/hub.log)"
"${COMPOSE[@]}" down -v --remove-orphans >/dev/null

# 7. A broken and a missing checkpoint: the container exits once (code 1, no restart) with one line.
mkdir -p "$CACHE/checkpoints"
printf 'not a checkpoint' >"$CACHE/checkpoints/broken.pt"
for teacher in /models/broken.pt /models/missing.pt; do
    DISCO_CHECKPOINTS=$CACHE/checkpoints DISCO_TEACHER=$teacher \
        "${COMPOSE[@]}" up -d --no-build teacher >/dev/null 2>&1
    CID=$("${COMPOSE[@]}" ps -q teacher)
    for _ in $(seq 180); do
        [ "$(docker inspect -f '{{.State.Status}}' "$CID")" = exited ] && break
        sleep 1
    done
    read -r status code restarts < <(docker inspect -f '{{.State.Status}} {{.State.ExitCode}} {{.RestartCount}}' "$CID")
    out=$(docker logs "$CID" 2>&1)
    "${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1
    [ "$status/$code/$restarts" = exited/1/0 ] || die "$teacher: container $status/$code/$restarts restarts, want exited/1/0"
    [ "$(printf '%s\n' "$out" | grep -c .)" = 1 ] && printf '%s' "$out" | grep -q "^error: " \
        || die "$teacher: want one error line, got: $out"
    log "$teacher: exited once with: $out"
done
T[image_mb]=$(( T[image_bytes] / 1000000 ))
printf '{"bench": "docker_smoke", "extras": "%s", "base_s": %s, "wheelhouse_s": %s, "build_s": %s, "healthy_s": %s, "hub_healthy_s": %s, "image_mb": %s, "uid": %s}\n' \
    "$EXTRAS" "${T[base_s]}" "${T[wheelhouse_s]}" "${T[build_s]}" "${T[healthy_s]}" "${T[hub_healthy_s]}" "${T[image_mb]}" "$uid" \
    | tee "$CACHE/times.json"
log "passed"
