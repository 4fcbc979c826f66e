"""Compile artifacts that outlive the VM: what `torch.compile` built on the first start, saved and loaded on the
next, so a fleet that scales to zero pays the compile once per (software, card, model, shapes), not once per VM.

An artifact is `torch.compiler.save_cache_artifacts()`'s blob (Inductor's kernels and AOTAutograd's graphs) behind
a header naming its `ArtifactKey`: torch and Triton versions, the card, the model's structure fingerprint, the
compile and quantize modes, the dtype and the warm-up shapes (size and batch). The key's digest names the object,
and the header is checked again on load, so an artifact of another torch, card or model is never loaded: it is a
miss, and the runner compiles (or stays eager, by setting). A corrupt or refused blob is a miss too, logged.

Stores are tried in order (the VM's disk first, then the bucket, `gpu_runner/adapters/storage.py`); a hit in a
later store is copied into the earlier ones; a fresh compile is saved to all of them. Weights are inputs of the
compiled graphs, not constants (no freezing), so the key needs the model's structure, not a hash of its weights."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import structlog
import torch

log = structlog.get_logger(__name__)

MAGIC = b"SOULCC1\n"
FORMAT = 1


class ArtifactStore(Protocol):
    """Where artifacts are kept: `get` answers None on a miss; `put` never overwrites (first writer wins)."""

    name: str

    def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, data: bytes) -> None: ...


@dataclass(frozen=True)
class ArtifactKey:
    torch: str
    triton: str
    device: str  # the card's name, or "cpu"
    model: str  # `model_fingerprint()` of the compiled module
    compile: str
    quantize: str
    dtype: str
    shapes: tuple[str, ...]  # warm-up shapes, "WIDTHxHEIGHT:BATCH", sorted
    format: int = FORMAT

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:32]

    @property
    def object_name(self) -> str:
        return f"sdxl-{self.compile}-{self.digest}.bin"

    def differences(self, header: dict) -> list[str]:
        """The key fields in which an artifact's header differs from this key (its checksum is not a key field)."""
        mine = json.loads(json.dumps(asdict(self)))
        other = {field: value for field, value in header.items() if field != "sha256"}
        return sorted(field for field in set(mine) | set(other) if mine.get(field) != other.get(field))


def model_fingerprint(module: torch.nn.Module) -> str:
    """The compiled graphs depend on the module's class, config and every parameter's and buffer's name, shape and
    dtype (quantization changes dtypes): a digest of those, computed in milliseconds even for SDXL's UNet."""
    digest = hashlib.sha256(type(module).__qualname__.encode())
    config = getattr(module, "config", None)
    if config is not None:
        digest.update(json.dumps(dict(config), sort_keys=True, default=str).encode())
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}:{type(tensor).__name__};".encode())
    return digest.hexdigest()[:24]


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def artifact_key(module: torch.nn.Module, *, device_name: str, compile_mode: str, quantize: str,
                 dtype: torch.dtype, shapes: list[tuple[int, int, int]]) -> ArtifactKey:
    return ArtifactKey(
        torch=torch.__version__, triton=_version("triton"), device=device_name, model=model_fingerprint(module),
        compile=compile_mode, quantize=quantize, dtype=str(dtype).removeprefix("torch."),
        shapes=tuple(sorted(f"{w}x{h}:{b}" for w, h, b in shapes)),
    )


def pack(key: ArtifactKey, blob: bytes) -> bytes:
    header = json.dumps({**asdict(key), "sha256": hashlib.sha256(blob).hexdigest()}, sort_keys=True).encode()
    return MAGIC + len(header).to_bytes(4, "big") + header + blob


def unpack(data: bytes) -> tuple[dict, bytes]:
    """(the header's key fields, the torch blob); ValueError for anything that is not an artifact of ours."""
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 4:
        raise ValueError("not a Soul compile artifact")
    size = int.from_bytes(data[len(MAGIC):len(MAGIC) + 4], "big")
    start = len(MAGIC) + 4
    try:
        header = json.loads(data[start:start + size])
    except ValueError as exc:
        raise ValueError(f"unreadable artifact header: {exc}") from exc
    if not isinstance(header, dict):
        raise ValueError("unreadable artifact header")
    return header, data[start + size:]


class LocalArtifactStore:
    """A folder on the VM's disk. Writes go to a temporary file and are renamed into place, so a reader never
    sees half an artifact and two writers cannot interleave."""

    name = "disk"

    def __init__(self, folder: Path):
        self._folder = Path(folder)

    def get(self, key: str) -> bytes | None:
        try:
            return (self._folder / key).read_bytes()
        except FileNotFoundError:
            return None

    def put(self, key: str, data: bytes) -> None:
        self._folder.mkdir(parents=True, exist_ok=True)
        target = self._folder / key
        if target.exists():
            return
        handle, temporary = tempfile.mkstemp(dir=self._folder, prefix=".partial-")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(data)
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


@dataclass(frozen=True)
class LoadResult:
    outcome: str  # "loaded" | "missing" | "mismatch" | "corrupt"
    store: str | None = None
    detail: str = ""


def load(key: ArtifactKey, stores: list[ArtifactStore]) -> LoadResult:
    """Find `key` in the stores and hot-load it into torch's compile caches. Never raises for a store's or the
    artifact's fault: anything but a clean load is a miss with its reason, and the caller compiles."""
    worst = LoadResult("missing")
    for index, store in enumerate(stores):
        try:
            data = store.get(key.object_name)
        except Exception as exc:  # noqa: BLE001 - an unreachable store is a miss, not a failed start
            log.warning("compile_cache_store_unreadable", store=store.name, error=repr(exc))
            continue
        if data is None:
            continue
        try:
            header, blob = unpack(data)
        except ValueError as exc:
            worst = LoadResult("corrupt", store.name, str(exc))
            continue
        differences = key.differences(header)
        if differences:
            worst = LoadResult("mismatch", store.name, f"differs in {', '.join(differences)}")
            continue
        if header.get("sha256") != hashlib.sha256(blob).hexdigest():
            worst = LoadResult("corrupt", store.name, "checksum does not match")
            continue
        try:
            # torch logs and answers None for a blob it cannot read (it raises for some others)
            loaded = torch.compiler.load_cache_artifacts(blob)
        except Exception as exc:  # noqa: BLE001 - torch refuses a blob it cannot use: compile instead
            loaded, refusal = None, repr(exc)
        else:
            refusal = "unreadable"
        if loaded is None:
            worst = LoadResult("corrupt", store.name, f"torch refused it: {refusal}")
            continue
        for earlier in stores[:index]:  # a bucket hit warms the disk for the next start
            _put(earlier, key, data)
        return LoadResult("loaded", store.name)
    return worst


def save(key: ArtifactKey, stores: list[ArtifactStore]) -> int:
    """Save what this process compiled under `key` to every store; returns the artifact's size (0: nothing)."""
    saved = torch.compiler.save_cache_artifacts()
    if not saved:
        return 0
    data = pack(key, saved[0])
    for store in stores:
        _put(store, key, data)
    return len(data)


def _put(store: ArtifactStore, key: ArtifactKey, data: bytes) -> None:
    try:
        store.put(key.object_name, data)
    except Exception as exc:  # noqa: BLE001 - the artifact is an optimization: a failed save costs the next start
        log.warning("compile_cache_store_unwritable", store=store.name, error=repr(exc))
