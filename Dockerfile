# DisCo cache teacher service: `docker compose up` (see docker-compose.yml).
# CUDA-capable PyTorch base; torch/torchvision come from the image, the rest from PyPI.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DISCO_HOST=0.0.0.0 \
    DISCO_PORT=8000 \
    DISCO_TEACHER=/models/teacher.pt \
    DISCO_STORE_ROOT=/stores

WORKDIR /app

# Dependencies first (cached layer), then the project itself.
COPY pyproject.toml README.md ./
COPY store ./store
COPY teacher_service ./teacher_service
COPY student_trainer ./student_trainer
RUN python -m pip install . \
    && python -c "import torch, torchvision, zarr, fastapi, uvicorn; print('torch', torch.__version__)"

# Unprivileged user; mount points it can write (the store root) or read (checkpoints).
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin disco \
    && mkdir -p /models /stores \
    && chown disco:disco /stores
USER disco

EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/healthz', timeout=3)"]

CMD ["disco", "serve"]
