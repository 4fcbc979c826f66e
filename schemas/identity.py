"""A soul's identity: its reference images and its LoRA adapter (`identities/{soul_id}`), the upload bodies that
set them, what a job carries of them to the runner, and the reproducibility record every image result names
(model and weights, adapters with versions, reference set, seed, scheduler, steps, guidance, size).

Versions are content hashes, so a new reference or adapter makes a new prompt key (functions/core/keys.py) and
no request is answered with the old look. Scheduler names are an allow-list shared by both deployables."""

from __future__ import annotations

import base64
import binascii
import hashlib
from datetime import datetime
from typing import Annotated, Literal, get_args

from pydantic import BeforeValidator, Field, WithJsonSchema

from schemas._base import Contract, Document, Reply
from schemas.ids import SOUL_ID_PATTERN

MAX_REFERENCES = 4
VERSION_PATTERN = r"^[0-9a-f]{16}$"
ADAPTER_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,39}$"
# Schedulers a style may allow and a request may pick; the runner maps each to a diffusers class
# (gpu_runner/pipelines/adapters.py `SCHEDULER_CLASSES`; a unit test keeps the two equal).
SchedulerName = Literal["euler", "euler_a", "ddim", "dpmpp_2m", "dpmpp_2m_karras", "unipc", "heun"]
SCHEDULERS: tuple[str, ...] = get_args(SchedulerName)


def content_version(data: bytes) -> str:
    """The version of an uploaded blob: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(data).hexdigest()[:16]


class ReferenceImage(Contract):
    """One stored reference image (re-encoded PNG), named by the hash of its re-encoded bytes."""

    ref_id: str = Field(pattern=VERSION_PATTERN)
    object: str
    width: int = Field(ge=1)
    height: int = Field(ge=1)
    bytes: int = Field(ge=1)
    created_at: datetime


class LoraAdapter(Contract):
    """A soul's LoRA: a validated diffusers/peft `.safetensors`, stored once under its content version."""

    name: str = Field(pattern=ADAPTER_NAME_PATTERN)
    version: str = Field(pattern=VERSION_PATTERN)
    scale: float = Field(ge=0.0, le=2.0)
    object: str
    rank: int = Field(ge=1)
    bytes: int = Field(ge=1)
    tensors: int = Field(ge=1)
    created_at: datetime


class IdentityDoc(Document):
    """`identities/{soul_id}`: written by admins only (rare), conditionally on the read."""

    soul_id: str = Field(pattern=SOUL_ID_PATTERN)
    references: list[ReferenceImage] = []
    lora: LoraAdapter | None = None
    updated_at: datetime


def reference_set_version(refs: list[ReferenceImage] | tuple) -> str | None:
    """One version for the whole set (order-free); None for no references."""
    ids = sorted(ref.ref_id for ref in refs)
    return hashlib.sha256(",".join(ids).encode()).hexdigest()[:16] if ids else None


# ---- upload bodies (JSON with base64, or multipart with the same field names) -------------------------------------


_BASE64 = r"^(?:[A-Za-z0-9+/]{4})+(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$|^[A-Za-z0-9+/]{2}==$|^[A-Za-z0-9+/]{3}=$"


def _decoded(value: object) -> bytes:
    """Base64 text from JSON (strictly: no stray characters), or a multipart file part's bytes as they are."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("not base64 (standard alphabet, padded)") from None
    raise ValueError("expected base64 text")


UploadBytes = Annotated[bytes, BeforeValidator(_decoded),
                        WithJsonSchema({"type": "string", "contentEncoding": "base64", "minLength": 4,
                                        "pattern": _BASE64})]


class ReferenceUpload(Contract):
    """`POST /style/{soul_id}/references`: one image, PNG, JPEG or WebP (multipart: a file field `image`)."""

    image: UploadBytes = Field(description="The image bytes (base64 in JSON; a file part in multipart).")


class LoraUpload(Contract):
    """`POST /style/{soul_id}/lora`: a LoRA in diffusers/peft `.safetensors` layout (multipart: a file field
    `lora` and form fields `name`, `scale`)."""

    name: str = Field(pattern=ADAPTER_NAME_PATTERN)
    scale: float = Field(default=1.0, ge=0.0, le=2.0)
    lora: UploadBytes = Field(description="The .safetensors bytes (base64 in JSON; a file part in multipart).")


class IdentityOut(Reply):
    """A soul's references and adapter, as an admin sees them."""

    soul_id: str
    references: list[ReferenceImage]
    reference_set_version: str | None
    identity_scale: float
    lora: LoraAdapter | None
    updated_at: datetime | None


# ---- what a job carries, and what a result says ---------------------------------------------------------------------


class ReferenceRef(Contract):
    ref_id: str = Field(pattern=VERSION_PATTERN)
    object: str


class LoraRef(Contract):
    name: str = Field(pattern=ADAPTER_NAME_PATTERN)
    version: str = Field(pattern=VERSION_PATTERN)
    scale: float = Field(ge=0.0, le=2.0)
    object: str


class AdapterUsed(Contract):
    name: str
    version: str
    scale: float


class Reproducibility(Contract):
    """How an image was made: the same record rendered again on the same device and weights gives the same pixels."""

    model: str
    weights_fingerprint: str
    adapters: tuple[AdapterUsed, ...] = ()
    reference_set_version: str | None = None
    identity_scale: float = 0.0
    seed: int
    seed_pinned: bool = False
    scheduler: str
    steps: int
    guidance: float
    width: int
    height: int
