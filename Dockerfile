# DisCo cache teacher service: `docker compose up` (see docker-compose.yml and README "Container").
#
# Build arguments:
#   BASE_IMAGE       any Debian-like image with python3 (3.11+) and its venv module
#                    (default python:3.11-slim-bookworm; `make docker-smoke` uses a local debootstrap)
#   TORCH_INDEX_URL  extra package index for the torch wheels; empty = PyPI, whose Linux x86_64 torch
#                    wheels are the CUDA builds (they run on CPU too). For a small CPU-only image:
#                    https://download.pytorch.org/whl/cpu
#   WHEELHOUSE_URL   install only from this wheel directory (an http URL, e.g. a local
#                    `pip wheel -c constraints.txt '.[models]' setuptools` folder served on loopback,
#                    used with `docker build --network host`); empty = the package index
#   EXTRAS           pyproject extras installed besides the core (comma-separated; default
#                    `models`: the timm:, hf: and open_clip: teacher sources, safetensors). Empty =
#                    the core only (the demo teacher and disco checkpoints; a smaller image)
#
# Downloaded weights go to /cache (HF_HOME=/cache/huggingface, TORCH_HOME=/cache/torch), a volume
# in docker-compose.yml, so a hub teacher is fetched once; HF_TOKEN / HF_HUB_OFFLINE pass through.
# Every package is pinned by constraints.txt: the image runs the versions the tests ran.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ARG TORCH_INDEX_URL=
ARG WHEELHOUSE_URL=
ARG EXTRAS=models

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    HOME=/home/disco \
    DISCO_HOST=0.0.0.0 \
    DISCO_PORT=8000 \
    DISCO_DEVICE=auto \
    DISCO_TEACHER=/app/student_trainer/assets/demo_teacher.pt \
    DISCO_STORE_ROOT=/stores \
    HF_HOME=/cache/huggingface \
    TORCH_HOME=/cache/torch

WORKDIR /app

# pip options shared by both install steps: the wheelhouse (no index) or PyPI (+ the torch index).
RUN printf '%s\n' '#!/bin/sh' 'set -e' \
      'if [ -n "$WHEELHOUSE_URL" ]; then set -- --no-index --find-links "$WHEELHOUSE_URL" "$@";' \
      'elif [ -n "$TORCH_INDEX_URL" ]; then set -- --extra-index-url "$TORCH_INDEX_URL" "$@"; fi' \
      'exec /opt/venv/bin/python -m pip install "$@"' > /usr/local/bin/pip-install \
    && chmod 755 /usr/local/bin/pip-install \
    && python3 -m venv /opt/venv

# Dependencies first (a cached layer while only the code changes): the core and the EXTRAS,
# pinned by constraints.txt. An unknown extra fails the build naming the valid ones.
COPY pyproject.toml constraints.txt ./
COPY scripts/requirements.py ./scripts/
RUN python3 scripts/requirements.py "$EXTRAS" > /tmp/requirements.txt \
    && pip-install -c constraints.txt 'setuptools>=68' -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The project itself; the shipped demo teacher stays in the tree as the default model.
COPY README.md ./
COPY store ./store
COPY teacher_service ./teacher_service
COPY student_trainer ./student_trainer
RUN pip-install -c constraints.txt --no-deps --no-build-isolation . \
    && /opt/venv/bin/python -c "import torch, torchvision, zarr, fastapi, uvicorn; print('torch', torch.__version__)" \
    && test -s "$DISCO_TEACHER"

# Unprivileged user (uid 10001, also without useradd in a minimal base); the store root and the
# weights cache are owned by it, so named volumes mounted there are writable.
RUN if command -v useradd >/dev/null; then \
        useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin disco; \
    else \
        echo 'disco:x:10001:10001::/home/disco:/usr/sbin/nologin' >> /etc/passwd \
        && echo 'disco:x:10001:' >> /etc/group && mkdir -p /home/disco; \
    fi \
    && mkdir -p /models /stores /cache/huggingface /cache/torch \
    && chown 10001:10001 /stores /home/disco /cache /cache/huggingface /cache/torch
USER 10001:10001

EXPOSE 8000
# Ready = teacher loaded and warmed. /readyz never needs the token (DISCO_TOKEN guards /v1/*), so
# the check holds with auth on. No `python` alias needed.
HEALTHCHECK --interval=5s --timeout=5s --start-period=120s --retries=3 \
    CMD ["/opt/venv/bin/python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]

CMD ["disco", "serve"]
