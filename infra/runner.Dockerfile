# The Soul GPU runner: `python -m gpu_runner` on CUDA. Build from the repository root:
#
#   docker build -f infra/runner.Dockerfile -t REGION-docker.pkg.dev/PROJECT/soul/soul-runner:TAG .
#
# (infra/runner.Dockerfile.dockerignore keeps the context to what the image needs.)
#
# No model weights inside: they are mounted read-only at /models by the VM (see infra/terraform), and
# HF_HUB_OFFLINE=1 makes any attempt to download one fail fast instead of pulling gigabytes at run time.
#
# Stopping: the runner handles SIGTERM by taking no new work and finishing the running job within
# SOUL_SHUTDOWN_GRACE_SECONDS (default 30). A Dockerfile cannot set the stop timeout, and Docker's default is
# 10 s: run it with `docker run --stop-timeout N` / `docker stop --time N` where N > SOUL_SHUTDOWN_GRACE_SECONDS
# (the VM's systemd unit does, with N = grace + 15). A job cut off anyway is not lost: its lease expires and the
# reconciler re-publishes it.

ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04
FROM ${CUDA_IMAGE}

# torch comes from PyTorch's CUDA wheel index, not from the default index: TORCH_CUDA names the CUDA build
# (cu126, cu128, cu130...; pick one published for this torch release, within what the VM's driver supports).
# The wheel brings its own CUDA runtime/cuDNN libraries as pip dependencies; from the host it only needs the
# driver (libcuda), which the VM mounts under /usr/local/nvidia (on LD_LIBRARY_PATH in nvidia/cuda images).
ARG TORCH_VERSION=2.13.0
ARG TORCH_CUDA=cu128
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_CUDA}

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONFAULTHANDLER=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Python 3.11 from Ubuntu 22.04 (jammy-updates), in a virtual environment owned by root.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:${PATH}

RUN pip install --upgrade pip \
    && pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

# The rest of the `runner` extra, read from pyproject.toml (a layer that changes only with the dependencies).
# torch==2.13.0 in that list is already satisfied by the CUDA build above (2.13.0+cu12x), so it stays.
COPY pyproject.toml README.md /tmp/soul/
RUN python -c "import tomllib; p = tomllib.load(open('/tmp/soul/pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['runner']))" > /tmp/soul/runner-requirements.txt \
    && pip install -r /tmp/soul/runner-requirements.txt

# The project itself with the `runner` extra (gpu_runner imports schemas and functions.logs; functions' own
# dependencies, functions-framework included, are not installed here).
COPY schemas /tmp/soul/schemas
COPY functions /tmp/soul/functions
COPY gpu_runner /tmp/soul/gpu_runner
# The package declares the `soul` console script; its module ships too so the entry point is not dangling.
COPY soul_cli /tmp/soul/soul_cli
RUN pip install "/tmp/soul[runner]" \
    && python -c "import torch; assert '${TORCH_VERSION}' in torch.__version__, torch.__version__" \
    && rm -rf /tmp/soul

# Non-root, with a writable home for the caches the libraries insist on.
RUN useradd --uid 10001 --create-home --home-dir /home/soul --shell /usr/sbin/nologin soul
USER 10001:10001
WORKDIR /home/soul

ENV HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HOME=/home/soul/.cache/huggingface \
    SOUL_MODEL_CACHE_DIR=/home/soul/.cache/soul/models \
    MAX_CONCURRENT_TASKS=1 \
    SDXL_MODEL=/models/sdxl \
    SVD_MODEL=/models/svd

LABEL org.opencontainers.image.title="soul-runner" \
      org.opencontainers.image.description="Soul GPU runner: soul-jobs -> SDXL/SVD -> GCS, Firestore, soul-events"

STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "gpu_runner"]
# Load the SDXL pipeline before taking work; override with other flags (e.g. `--burst`) as needed.
CMD ["--warm"]
