#!/usr/bin/env bash
# Builds the runner image for the GPU VMs (x86-64) with its CUDA base pinned by digest:
#
#   infra/build_runner_image.sh IMAGE [--push]
#     IMAGE   e.g. us-central1-docker.pkg.dev/PROJECT/soul/soul-runner:v1 (terraform output runner_image_repository)
#     --push  push to the registry (needs `gcloud auth configure-docker REGION-docker.pkg.dev` once)
#
# CUDA_BASE (env) picks the base: a tag (default nvidia/cuda:12.8.1-base-ubuntu22.04), resolved here to the
# digest the registry serves now, or an already pinned TAG@sha256:DIGEST, used as is. The pinned reference is
# printed and stored in the image's org.opencontainers.image.base.name label: put it in CUDA_BASE to rebuild
# from exactly the same base later. Needs docker with buildx (Docker Desktop, or docker-buildx-plugin).
set -euo pipefail

image="${1:?usage: infra/build_runner_image.sh IMAGE [--push]}"
output="--load"
[[ "${2:-}" == "--push" ]] && output="--push"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
base="${CUDA_BASE:-nvidia/cuda:12.8.1-base-ubuntu22.04}"

if [[ "$base" != *@sha256:* ]]; then
  digest="$(docker buildx imagetools inspect "$base" --format '{{json .Manifest.Digest}}' | tr -d '"')"
  [[ "$digest" == sha256:* ]] || { echo "could not resolve the digest of $base (got: '$digest')" >&2; exit 1; }
  base="$base@$digest"
fi
echo "base: $base"

docker buildx build \
  --platform linux/amd64 \
  --file "$root/infra/runner.Dockerfile" \
  --build-arg "CUDA_BASE=$base" \
  --label "org.opencontainers.image.base.name=$base" \
  --tag "$image" \
  "$output" \
  "$root"
