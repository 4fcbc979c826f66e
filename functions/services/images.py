"""Image requests: resolve the soul's style, key the prompt, deliver an unseen variant or make sure exactly one
job makes the next one. This is the one code path behind `GET/POST /image`, `/image/selfie` and `ingest`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from functions.adapters.firestore.jobs import JobStore
from functions.adapters.firestore.prompts import PromptIndex, PromptStore
from functions.adapters.pubsub import Publisher
from functions.adapters.signing import UrlSigner
from functions.core import content_policy, estimates, keys
from functions.core.content_policy import Viewer
from functions.core.errors import ContentRefused, InvalidInput
from functions.core.normalize import CueError, normalize_cue
from functions.core.places import UnknownChoice, choose_place, remember, selfie_cue, shipped_places
from functions.core.tenants import DEFAULT_TENANT, scoped_user
from functions.core.memo import TtlMemo
from functions.core.variants import next_index_of
from functions.services import lanes
from functions.services.content import ContentPolicies
from functions.services.jobs import Interest, ensure_job
from functions.services.identity import IdentityService
from functions.services.links import variant_link, variant_links
from functions.services.quotas import QuotaService
from functions.services.styles import StyleService
from functions.services.usage import GpuUsage
from functions.services.warm_pool import WARM_POOL_USER, WarmPool
from functions.settings import FunctionsSettings
from schemas._base import utcnow
from schemas.api import ImageQueued, ImageReady, Place, SelfieRequest, Variant
from schemas.documents import PromptDoc, Style, VariantDoc
from schemas.push import WarmAnswer, WarmRequest
from schemas.identity import IdentityDoc, LoraRef, ReferenceRef, reference_set_version
from schemas.ids import new_ulid
from schemas.jobs import ImageJobSpec, JobDoc, JobLane, JobType

_PACE_TTL_S = 10.0
_MAX_SKIPPED_VARIANTS = 2


@dataclass(frozen=True)
class ImageAsk:
    """A validated image request in the product's terms. `place` is set for selfies. `user_id` is the tenant's
    own end-user id; storage namespaces it by `tenant`."""

    soul_id: str
    cue: str
    user_id: str
    kind: str = "image"
    place: str | None = None
    tenant: str = DEFAULT_TENANT
    lane: JobLane = JobLane.INTERACTIVE
    seed: int | None = None  # pinned: the pk has one variant, rendered with this seed
    scheduler: str | None = None  # one of the style's `schedulers`
    admin: bool = False  # an admin key asks (content policy `blur`: it also gets the original)


@dataclass(frozen=True)
class Look:
    """How a soul is drawn right now: its style, its identity (references, adapter) and the request's pins, and
    the prompt key they make together."""

    style: Style
    identity: IdentityDoc | None
    scheduler: str | None
    pk: str


class ImageService:
    def __init__(
        self,
        prompts: PromptStore,
        jobs: JobStore,
        styles: StyleService,
        publisher: Publisher,
        signer: UrlSigner,
        settings: FunctionsSettings,
        defaults: estimates.EstimateDefaults,
        quotas: QuotaService,
        warm_pool: WarmPool,
        usage: GpuUsage | None = None,
        identities: IdentityService | None = None,
        content: ContentPolicies | None = None,
    ):
        self._prompts = prompts
        self._jobs = jobs
        self._styles = styles
        self._publisher = publisher
        self._signer = signer
        self._settings = settings
        self._defaults = defaults
        self._quotas = quotas
        self._usage = usage  # counts dedup hits for the GPU-seconds statistics
        self._warm = warm_pool
        self._pace = TtlMemo(_PACE_TTL_S, max_entries=1)
        self._identities = identities  # None: souls have no references or adapters (today's keys)
        self.content = content or ContentPolicies(None, settings)


    def look(self, soul_id: str, kind: str, cue: str, seed: int | None = None,
             scheduler: str | None = None) -> Look:
        """The style (stored wins over the catalog; else 404), identity and pins of a request, and its key."""
        style = self._styles.current(soul_id).style
        if scheduler is not None and scheduler not in style.schedulers:
            allowed = ", ".join(style.schedulers) or "none"
            raise InvalidInput(f"scheduler '{scheduler}' is not allowed for '{soul_id}' (allowed: {allowed})",
                               field="scheduler")
        identity = self._identities.current(soul_id) if self._identities is not None else None
        refs = identity.references if identity else []
        lora = identity.lora if identity else None
        parts = keys.identity_fingerprint(
            reference_set_version=reference_set_version(refs), identity_scale=style.identity_scale,
            lora=(lora.name, lora.version, lora.scale) if lora else None, seed=seed, scheduler=scheduler,
        )
        pk = keys.prompt_key(kind=kind, soul_id=soul_id, cue=cue, style=style, model_tag=self._settings.model_tag,
                             identity=parts)
        return Look(style=style, identity=identity, scheduler=scheduler or style.scheduler, pk=pk)

    def selfie(self, request: SelfieRequest, tenant: str = DEFAULT_TENANT) -> ImageReady | ImageQueued:
        """A selfie is an image whose cue names a place chosen for the city and mood, fresh for this user."""
        catalog = shipped_places()
        user = scoped_user(tenant, request.user_id)
        recent = self._prompts.recent_places(user)
        try:
            place = choose_place(
                catalog, request.city_key, request.mood, recent, seed=f"{request.user_id}|{request.soul_id}"
            )
        except UnknownChoice as exc:
            raise InvalidInput(str(exc), field=exc.field) from exc
        city = catalog.cities[request.city_key]
        answer = self.request(
            ImageAsk(
                soul_id=request.soul_id, cue=selfie_cue(place, city, request.mood), user_id=request.user_id,
                kind="selfie", place=place.key, tenant=tenant, lane=request.lane,
            )
        )
        self._prompts.set_recent_places(user, remember(recent, place.key))
        named = Place(key=place.key, name=place.name, city_key=request.city_key, city_name=city.name)
        return answer.model_copy(update={"place": named})

    def request(self, ask: ImageAsk) -> ImageReady | ImageQueued:
        try:
            cue = normalize_cue(ask.cue)
        except CueError as exc:
            raise InvalidInput(str(exc), field="cue") from exc
        self.content.screen(ask.tenant, cue)  # blocked terms: 422 before any read, job or GPU second
        look = self.look(ask.soul_id, ask.kind, cue, ask.seed, ask.scheduler)
        style, pk = look.style, look.pk
        user = scoped_user(ask.tenant, ask.user_id)
        index_now = self._prompts.index_of(pk, user)  # one round trip, whatever the number of variants
        viewer = self.content.viewer(ask.tenant, admin=ask.admin)
        if ask.seed is not None and index_now.variant_ids:
            # A pinned request names one image: the same pinned request is the same variant, seen or not (unless
            # this tenant's policy withholds it: rendering the same seed again would make the same image).
            pinned = self._prompts.variant(index_now.variant_ids[0])
            if pinned is not None:
                if not content_policy.deliverable(viewer, pinned.safety):
                    raise ContentRefused("the image this pinned seed makes is withheld by this tenant's content "
                                         "policy; pin another seed", field="seed")
                return ImageReady(pk_id=pk, variant=self.variant_view(pinned, viewer))
        self._warm.observe(pk, ask.kind, user, ask.tenant)
        # Variants are shared between tenants: one this tenant's policy withholds is never its dedup hit (the next
        # variant is made instead, and its own result may be withheld in turn).
        unseen = self._first_unseen(index_now, viewer)
        if unseen is not None:
            if self._usage is not None:
                self._usage.record_dedup_hit(ask.tenant)  # in memory; flushed off the request path
            left = len(index_now.unseen) - 1  # once this one is taken
            self._warm.after_take(pk, unseen.variant_index, left,
                                  next_index_of(index_now.variant_indices, index_now.variant_ids),
                                  partial(self.prerender, tenant=ask.tenant), ask.tenant)
            return ImageReady(pk_id=pk, variant=self.variant_view(unseen, viewer))
        index = next_index_of(index_now.variant_indices, index_now.variant_ids)
        describe = None
        if index == 0:
            now = utcnow()
            prompt = PromptDoc(pk=pk, kind=ask.kind, soul_id=ask.soul_id, cue=cue,
                               style_fingerprint=keys.style_fingerprint(style), created_at=now, updated_at=now)
            describe = partial(self._describe, prompt)  # by the job's creator only, once
        job = self._ensure_variant_job(ask, pk, cue, look, index, on_created=describe)
        self._warm.after_join(pk, job, ask.tenant, partial(self.prerender, tenant=ask.tenant))
        return ImageQueued(
            status=job.status,
            task_id=job.job_id,
            pk_id=pk,
            status_url=f"{self._settings.public_base_url}/tasks/{job.job_id}",
            estimated_seconds=estimates.image_seconds(self._runner_stats(), self._defaults),
        )

    def _describe(self, prompt: PromptDoc) -> None:
        """A new prompt key's entry, and the warm-pool settings its cue had under its earlier keys."""
        self._prompts.ensure_prompt(prompt)
        self._warm.carry_over(keys.cue_key(kind=prompt.kind, soul_id=prompt.soul_id, cue=prompt.cue), prompt.pk)

    def _first_unseen(self, index: PromptIndex, viewer: Viewer) -> VariantDoc | None:
        """The first variant of the index the user has not seen and may be given: one read, a few more only when
        the tenant's content policy withholds the first ones (at most `_MAX_SKIPPED_VARIANTS` are stepped over,
        so reads stay bounded; past them a new variant is made)."""
        for variant_id in index.unseen[:_MAX_SKIPPED_VARIANTS + 1]:
            variant = self._prompts.variant(variant_id)
            if variant is not None and content_policy.deliverable(viewer, variant.safety):
                return variant
        return None

    def _runner_stats(self) -> list:
        """The runners' pace for estimates, read at most once per `_PACE_TTL_S` per instance (it changes per job)."""
        stats = self._pace.get("stats")
        if stats is None:
            stats = self._jobs.runner_stats()
            self._pace.put("stats", stats)
        return stats  # type: ignore[return-value]

    def _ensure_variant_job(self, ask: ImageAsk, pk: str, cue: str, look: Look, index: int,
                            on_created: Callable[[], None] | None = None) -> JobDoc:
        """The job making variant `index` of `pk` (created once, whoever asks first; promoted when waited on)."""
        style, identity = look.style, look.identity
        refs = identity.references if identity else []
        lora = identity.lora if identity else None
        spec = ImageJobSpec(
            soul_id=ask.soul_id,
            pk=pk,
            variant_index=index,
            variant_id=new_ulid(),
            cue=cue,
            prompt=keys.compose_prompt(style, cue),
            negative_prompt=style.negative_prompt,
            width=style.width,
            height=style.height,
            steps=style.steps,
            guidance=style.guidance,
            seed=ask.seed if ask.seed is not None else keys.variant_seed(pk, index),
            style_fingerprint=keys.style_fingerprint(style),
            place=ask.place,
            references=tuple(ReferenceRef(ref_id=r.ref_id, object=r.object) for r in refs),
            reference_set_version=reference_set_version(refs),
            identity_scale=style.identity_scale if refs else 0.0,
            lora=LoraRef(name=lora.name, version=lora.version, scale=lora.scale, object=lora.object) if lora else None,
            scheduler=look.scheduler,
            seed_pinned=ask.seed is not None,
        )
        user = scoped_user(ask.tenant, ask.user_id)
        job = ensure_job(
            self._jobs,
            self._publisher,
            lambda retry: JobDoc(
                job_id=keys.image_job_id(pk, index, retry), type=JobType.IMAGE, request=spec,
                requested_by=ask.user_id, soul_id=ask.soul_id, created_at=utcnow(), updated_at=utcnow(),
                lane=ask.lane,
            ),
            Interest(ask.tenant, ask.user_id),
            admit=lambda: self._quotas.admit_job(
                ask.tenant, user_key=user, cue=keys.cue_key(kind=ask.kind, soul_id=ask.soul_id, cue=cue),
                gpu_seconds=estimates.image_seconds(self._runner_stats(), self._defaults)),
            on_created=(lambda _job: on_created()) if on_created is not None else None,
        )
        return lanes.promote_if_waited_on(self._jobs, self._publisher, job, ask.lane)

    def prerender(self, prompt: PromptDoc, index: int, tenant: str = DEFAULT_TENANT) -> JobDoc | None:
        """A background job for variant `index` of an image prompt key (the warm pool's renders), admitted and
        charged under `tenant`'s quota (the tenant whose demand asked for it); None when the soul's style changed
        since (the key is then no longer the one users ask for)."""
        if prompt.kind != "image":
            return None
        look = self.look(prompt.soul_id, "image", prompt.cue)
        if look.pk != prompt.pk:  # the style, references or adapter changed since: nobody asks for this key now
            return None
        ask = ImageAsk(soul_id=prompt.soul_id, cue=prompt.cue, user_id=WARM_POOL_USER, tenant=tenant,
                       lane=JobLane.BACKGROUND)
        return self._ensure_variant_job(ask, prompt.pk, prompt.cue, look, index)

    def warm(self, request: WarmRequest, tenant: str = DEFAULT_TENANT) -> WarmAnswer:
        """`POST /image/warm`: keep `variants` fresh variants of this cue ahead, from now on."""
        try:
            cue = normalize_cue(request.cue)
        except CueError as exc:
            raise InvalidInput(str(exc), field="cue") from exc
        self.content.screen(tenant, cue)
        look = self.look(request.soul_id, "image", cue)
        style, pk = look.style, look.pk
        now = utcnow()
        self._prompts.ensure_prompt(PromptDoc(pk=pk, kind="image", soul_id=request.soul_id, cue=cue,
                                            style_fingerprint=keys.style_fingerprint(style), created_at=now,
                                            updated_at=now))
        return self._warm.warm(pk, request.variants, self._prompts.variants_of(pk),
                               partial(self.prerender, tenant=tenant), tenant,
                               cue_key=keys.cue_key(kind="image", soul_id=request.soul_id, cue=cue))

    def variant_view(self, variant: VariantDoc, viewer: Viewer = Viewer()) -> Variant | None:
        """The variant as `viewer` may see it; None when its content policy withholds it."""
        return variant_link(self._signer, variant, viewer)

    def variant_views(self, variants: Sequence[VariantDoc], viewer: Viewer = Viewer()) -> list[Variant | None]:
        """A listing page's variants as `viewer` may see them (None where withheld), their URLs signed together
        (reused when fresh, the rest in parallel)."""
        return variant_links(self._signer, variants, viewer)
