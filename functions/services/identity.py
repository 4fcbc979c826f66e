"""A soul's identity: 1-4 reference images and at most one LoRA adapter, set by admins. Uploads are validated in
full before anything is written (functions/core/uploads.py), then the object goes to GCS create-only under its
content version, then `identities/{soul_id}` is written conditionally on the read (a lost race re-reads and decides
again). A refused upload writes nothing.

Deleting a reference or the adapter only drops it from the document: the objects stay, because jobs already
queued name them (they are content-addressed and create-only). The image service reads the document on each
request so the prompt key carries the current versions (functions/core/keys.py `identity_fingerprint`)."""

from __future__ import annotations

from collections.abc import Callable

from functions.adapters.firestore.identities import IdentityStore
from functions.adapters.gcs import AssetStore
from functions.core.errors import Conflict, NotFound, Unavailable
from functions.core.memo import RefreshingMemo
from functions.core.uploads import UploadLimits, lora_targets, reencode_reference, validate_lora
from functions.services.styles import StyleService
from schemas import names
from schemas._base import utcnow
from schemas.identity import (
    MAX_REFERENCES,
    IdentityDoc,
    IdentityOut,
    LoraAdapter,
    LoraUpload,
    ReferenceImage,
    content_version,
    reference_set_version,
)

_RACE_RETRIES = 8


class IdentityService:
    def __init__(self, store: IdentityStore, assets: AssetStore, styles: StyleService, model_tag: str,
                 limits: UploadLimits = UploadLimits(), cache_s: float = 0.0):
        self._store = store
        self._assets = assets
        self._styles = styles
        self._model_tag = model_tag
        self._limits = limits
        # Kept per instance like the style (StyleService.current): a change here shows at once, elsewhere within
        # `cache_s`; a soul without an identity is kept too (most souls), so a dedup hit reads neither document.
        self._cache = RefreshingMemo(cache_s) if cache_s > 0 else None

    def current(self, soul_id: str) -> IdentityDoc | None:
        """What image requests key and render with (one document read, or none: kept like the style)."""
        if self._cache is None:
            return self._store.read(soul_id)[0]
        return self._cache.get(soul_id, lambda: self._store.read(soul_id)[0])  # type: ignore[return-value]

    def get(self, soul_id: str) -> IdentityOut:
        style = self._styles.get(soul_id).style  # 404 for an unknown soul
        return _view(soul_id, self._store.read(soul_id)[0], style.identity_scale)

    def add_reference(self, soul_id: str, data: bytes) -> IdentityOut:
        style = self._styles.get(soul_id).style
        facts = reencode_reference(data, self._limits)
        ref_id = content_version(facts.png)
        reference = ReferenceImage(ref_id=ref_id, object=names.reference_object(soul_id, ref_id), width=facts.width,
                                   height=facts.height, bytes=len(facts.png), created_at=utcnow())
        uploaded = False

        def change(doc: IdentityDoc) -> IdentityDoc | None:
            nonlocal uploaded
            if any(ref.ref_id == ref_id for ref in doc.references):
                return None  # the same image again: nothing changes
            if len(doc.references) >= MAX_REFERENCES:
                raise Conflict(f"'{soul_id}' has {MAX_REFERENCES} reference images, the most it may have; delete "
                               "one first", field="image")
            if not uploaded:  # only once the upload is admissible, and only once per call
                self._assets.put_once(reference.object, facts.png, "image/png")
                uploaded = True
            return doc.model_copy(update={"references": [*doc.references, reference]})

        return _view(soul_id, self._update(soul_id, change), style.identity_scale)

    def delete_reference(self, soul_id: str, ref_id: str) -> IdentityOut:
        style = self._styles.get(soul_id).style

        def change(doc: IdentityDoc) -> IdentityDoc | None:
            if not any(ref.ref_id == ref_id for ref in doc.references):
                raise NotFound(f"'{soul_id}' has no reference image '{ref_id}'", field="ref_id")
            return doc.model_copy(update={"references": [r for r in doc.references if r.ref_id != ref_id]})

        return _view(soul_id, self._update(soul_id, change), style.identity_scale)

    def put_lora(self, soul_id: str, upload: LoraUpload) -> IdentityOut:
        style = self._styles.get(soul_id).style
        facts = validate_lora(upload.lora, lora_targets(self._model_tag), self._limits)
        version = content_version(upload.lora)
        adapter = LoraAdapter(name=upload.name, version=version, scale=upload.scale,
                              object=names.lora_object(soul_id, version), rank=facts.rank, bytes=len(upload.lora),
                              tensors=facts.tensors, created_at=utcnow())
        self._assets.put_once(adapter.object, upload.lora, "application/octet-stream")

        def change(doc: IdentityDoc) -> IdentityDoc | None:
            old = doc.lora
            if old is not None and (old.name, old.version, old.scale) == (adapter.name, version, adapter.scale):
                return None
            return doc.model_copy(update={"lora": adapter})

        return _view(soul_id, self._update(soul_id, change), style.identity_scale)

    def delete_lora(self, soul_id: str) -> IdentityOut:
        style = self._styles.get(soul_id).style

        def change(doc: IdentityDoc) -> IdentityDoc | None:
            if doc.lora is None:
                raise NotFound(f"'{soul_id}' has no LoRA adapter", field="soul_id")
            return doc.model_copy(update={"lora": None})

        return _view(soul_id, self._update(soul_id, change), style.identity_scale)

    def _update(self, soul_id: str, change: Callable[[IdentityDoc], IdentityDoc | None]) -> IdentityDoc:
        """Apply `change` to the stored document (an empty one when absent) until a conditional write lands;
        `change` returns None for "nothing to write"."""
        for _ in range(_RACE_RETRIES):
            stored, version = self._store.read(soul_id)
            base = stored or IdentityDoc(soul_id=soul_id, updated_at=utcnow())
            changed = change(base)
            if changed is None:
                return base
            changed = changed.model_copy(update={"updated_at": utcnow()})
            if self._store.write(changed, version):
                if self._cache is not None:
                    self._cache.drop(soul_id)  # this instance's next request keys with the new identity
                return changed
        raise Unavailable(f"the identity of '{soul_id}' is under concurrent writes; retry")


def _view(soul_id: str, doc: IdentityDoc | None, identity_scale: float) -> IdentityOut:
    references = doc.references if doc else []
    return IdentityOut(soul_id=soul_id, references=references, reference_set_version=reference_set_version(references),
                       identity_scale=identity_scale, lora=doc.lora if doc else None,
                       updated_at=doc.updated_at if doc else None)
