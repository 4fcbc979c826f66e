# The Soul GPU runner: `python -m gpu_runner` on CUDA. Build from the repository root:
#
#   infra/build_runner_image.sh REGION-docker.pkg.dev/PROJECT/soul/soul-runner:TAG [--push]
#
# which runs `docker buildx build --platform linux/amd64` (the VMs are x86-64; an arm64 laptop must not build for
# itself) with CUDA_BASE pinned by digest. infra/runner.Dockerfile.dockerignore keeps the context to what the
# image needs.
#
# No model weights inside: they are mounted read-only at /models by the VM (see infra/terraform), and
# HF_HUB_OFFLINE=1 makes any attempt to download one fail fast instead of pulling gigabytes at run time.
#
# Stopping: the runner handles SIGTERM by taking no new work and finishing the running job within
# SOUL_SHUTDOWN_GRACE_SECONDS (default 30). A Dockerfile cannot set the stop timeout, and Docker's default is
# 10 s: run it with `docker run --stop-timeout N` / `docker stop --time N` where N > SOUL_SHUTDOWN_GRACE_SECONDS
# (the VM's systemd unit does, with N = grace + 15). A job cut off anyway is not lost: its lease expires and the
# reconciler re-publishes it.

# The base: CUDA's `-base-` flavour (the CUDA runtime and nothing more). torch's CUDA wheels bring their own
# CUDA/cuDNN libraries as pip packages; from the host the container needs only the driver (libcuda), which the VM
# mounts under /usr/local/nvidia. Pin it by digest: CUDA_BASE=nvidia/cuda:TAG@sha256:DIGEST (the build script
# resolves the tag's digest when none is given; see infra/README.md "Runner image").
ARG CUDA_BASE=nvidia/cuda:12.8.1-base-ubuntu22.04

#checkov:skip=CKV_DOCKER_7:the base is the CUDA_BASE build-arg, a versioned tag pinned by sha256 digest by infra/build_runner_image.sh
FROM --platform=linux/amd64 ${CUDA_BASE} AS python

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

# The runner's third-party requirements, read from pyproject.toml: [project].dependencies + the `runner` extra.
# A stage of its own, so that the install layers below are keyed on the requirement list alone (a version bump,
# a README or code change in the repository does not re-download torch).
FROM python AS requirements
COPY pyproject.toml /tmp/soul/pyproject.toml
RUN python -c "import tomllib; p = tomllib.load(open('/tmp/soul/pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['runner']))" > /tmp/runner-requirements.txt

FROM python AS runtime

# torch comes from PyTorch's CUDA wheel index, not from the default index: TORCH_CUDA names the CUDA build
# (cu126, cu128, cu130...; pick one published for this torch release, within what the VM's driver supports).
ARG TORCH_VERSION=2.13.0
ARG TORCH_CUDA=cu128
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_CUDA}
RUN pip install --upgrade pip \
    && pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

# torch==2.13.0 in that list is already satisfied by the CUDA build above (2.13.0+cu12x), so it stays.
COPY --from=requirements /tmp/runner-requirements.txt /tmp/runner-requirements.txt
RUN pip install -r /tmp/runner-requirements.txt && rm /tmp/runner-requirements.txt

# The project itself, without touching the dependencies installed above. gpu_runner imports schemas and soul_common
# only (tests/unit/test_runner_layers.py checks that it never imports functions): no functions/ code in the image.
# soul_cli ships because the package declares the `soul` console script.
COPY pyproject.toml README.md /tmp/soul/
COPY schemas /tmp/soul/schemas
COPY soul_common /tmp/soul/soul_common
COPY gpu_runner /tmp/soul/gpu_runner
COPY soul_cli /tmp/soul/soul_cli
RUN pip install --no-deps /tmp/soul \
    && python -c "import torch; assert '${TORCH_VERSION}' in torch.__version__, torch.__version__" \
    && python -c "import gpu_runner.worker, gpu_runner.health" \
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
    SVD_MODEL=/models/svd \
    SOUL_HEALTH_HOST=0.0.0.0 \
    SOUL_HEALTH_PORT=8080

# gpu_runner/health.py: alive = the intake loop ticks (or a job runs, or the model is still loading). The VM's
# managed instance group probes the same endpoint for autohealing.
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=10s --start-period=900s --retries=4 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ['SOUL_HEALTH_PORT'], timeout=8)"]

LABEL org.opencontainers.image.title="soul-runner" \
      org.opencontainers.image.description="Soul GPU runner: soul-jobs -> SDXL/SVD -> GCS, Firestore, soul-events"

STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "gpu_runner"]
# Load the SDXL pipeline before taking work; override with other flags (e.g. `--burst`) as needed.
CMD ["--warm"]
