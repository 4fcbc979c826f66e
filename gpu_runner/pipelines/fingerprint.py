"""The weights fingerprint a result names (schemas/identity.py `Reproducibility`): a SHA-256 over each weight
file of a model folder (or one single-file checkpoint) — its path, size, the safetensors header (every tensor's
name, dtype, shape and offsets) and its first and last MiB. Reading a few MiB per file keeps it cheap for
SDXL's 7 GB while any retrained, re-quantized or swapped file changes it."""

from __future__ import annotations

import hashlib
from pathlib import Path

_EDGE = 1024 * 1024
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".ckpt")


def weights_fingerprint(model: Path) -> str:
    model = Path(model)
    files = [model] if model.is_file() else sorted(
        p for p in model.rglob("*") if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    digest = hashlib.sha256()
    for path in files:
        size = path.stat().st_size
        digest.update(f"{path.relative_to(model) if path != model else path.name}\0{size}\0".encode())
        with path.open("rb") as handle:
            if path.suffix == ".safetensors" and size >= 8:
                header = int.from_bytes(handle.read(8), "little")
                digest.update(handle.read(min(header, size - 8)))
            handle.seek(0)
            digest.update(handle.read(_EDGE))
            if size > _EDGE:
                handle.seek(max(_EDGE, size - _EDGE))
                digest.update(handle.read(_EDGE))
    return digest.hexdigest()[:16]
