"""A loaded SDXL pipeline's per-soul conditioning: LoRA adapters, the IP-Adapter on reference images, and the
scheduler a render asks for. One `AdapterHost` per pipeline, used only under its render lock (`sdxl.render_images`
calls `prepare` there), so a batch's whole call sees one adapter set.

- **LoRA**: loaded by name (`{name}-{version}`) through diffusers/peft without reloading the base model, kept
  resident in a least-recently-used set bounded by count (`SOUL_LORA_RESIDENT`) and bytes
  (`SOUL_LORA_BUDGET_MB`); a render activates exactly its adapter at its scale, or none (adapters disabled).
- **LoRA on a compiled UNet**: adding adapter layers, `disable_lora` and a new scale each change what torch.compile
  traced, so each would recompile (and after a few, dynamo gives up and runs eager). So before the runner compiles
  (`startup.prepare_sdxl` calls `before_compile`, which calls `prepare_slot`), one slot is made: zero LoRA
  weights at `SOUL_LORA_HOTSWAP_RANK` on every layer `SOUL_LORA_SLOT_TARGETS` names, scalings as tensors
  (`enable_lora_hotswap`). The graphs are
  traced with the slot in them; a render's LoRA is copied into it (`load_lora_weights(..., hotswap=True)`), its
  scale written into the scaling tensors in place, and a render without one runs the slot at scale 0 (which adds
  exactly zero). The price: the slot's low-rank matmuls in every call. A LoRA outside the slot (another layer, a
  higher rank) is refused with a clear error, never a silent recompile.
- **IP-Adapter**: loaded once on first use, or before compiling (`prepare_ip_slot`), with its image encoder, from
  `SOUL_IP_ADAPTER_MODEL` (a local folder; the tiny random one only for the tiny model: a runner with real weights
  and no IP-Adapter refuses references with a clear error). A reference set is encoded once (embeddings kept per
  set) and its embeddings repeated up to `IP_IMAGE_SLOTS` (the least common multiple of 1..MAX_REFERENCES), every
  reference the same number of times: attention over repeated keys is attention over the set, so the image is
  diffusers' own concatenation of the set, and every render shows the UNet one shape. The style's
  `identity_scale` is folded into the adapter's `to_v_ip` weights (the attention output is linear in its values)
  while the processors' own scale stays 1.0, a constant the compiled graphs never see change; a render without
  references runs at scale 0, which adds exactly zero (the base model's pixels). So neither a reference set, its
  size, a scale nor none recompiles a compiled UNet.
- **Schedulers**: the allow-list of schemas/identity.py mapped to diffusers classes, built from the pipeline's own
  scheduler config; no name means the pipeline's default."""

from __future__ import annotations

import io
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    UniPCMultistepScheduler,
)
from PIL import Image

from gpu_runner.errors import InvalidRenderSpec
from gpu_runner.pipelines.lora_targets import COMPONENTS, linear_table
from gpu_runner.pipelines.specs import RenderSpec
from schemas.identity import MAX_REFERENCES

log = structlog.get_logger(__name__)

# name -> (class, config overrides)
SCHEDULER_CLASSES: dict[str, tuple[type, dict]] = {
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "ddim": (DDIMScheduler, {}),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {}),
    "dpmpp_2m_karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
    "unipc": (UniPCMultistepScheduler, {}),
    "heun": (HeunDiscreteScheduler, {}),
}
HOTSWAP_SLOT = "soul-slot"
# What most SDXL LoRAs train (diffusers' and kohya's defaults): the UNet's attention projections and the text
# encoders' (`SOUL_LORA_SLOT_TARGETS`).
DEFAULT_SLOT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "q_proj", "k_proj", "v_proj", "out_proj")
_REFERENCE_CACHE = 16  # decoded reference images kept (a few souls' sets)
_EMBEDDING_CACHE = 16  # encoded reference sets kept
# Image embeddings per render: every set size divides it, so each reference of a set appears equally often.
IP_IMAGE_SLOTS = math.lcm(*range(1, MAX_REFERENCES + 1))

Fetch = Callable[[str], bytes]  # object name -> bytes (the runner's GCS media store)


@dataclass
class AdapterStats:
    loads: int = 0  # LoRA loads (misses), hot swaps included
    hits: int = 0  # renders whose LoRA was resident
    evictions: int = 0
    ip_adapter_loads: int = 0


@dataclass(frozen=True)
class Conditioning:
    """What `prepare` set up for one pipeline call: extra pipeline arguments, the seconds spent loading, the
    scheduler's name."""

    kwargs: dict = field(default_factory=dict)
    load_seconds: float = 0.0
    scheduler: str = ""


class AdapterHost:
    def __init__(self, *, cache_dir: Path, ip_adapter_model: str | None, ip_adapter_weight_name: str,
                 resident: int, budget_bytes: int, hotswap: bool | None = None, hotswap_rank: int = 128,
                 slot_targets: tuple[str, ...] = DEFAULT_SLOT_TARGETS, tiny_ip_adapter: bool = False):
        """`ip_adapter_model` None: the tiny random IP-Adapter when `tiny_ip_adapter` (the tiny model), else none."""
        self._cache_dir = Path(cache_dir)
        self._ip_model = ip_adapter_model
        self._ip_weight_name = ip_adapter_weight_name
        self._tiny_ip = tiny_ip_adapter
        self._resident_max = resident
        self._budget = budget_bytes
        self._hotswap = hotswap  # None: when the UNet is compiled
        self._hotswap_rank = hotswap_rank
        self._loras: OrderedDict[str, int] = OrderedDict()  # adapter name -> bytes, least recently used first
        self._slot: str | None = None  # the LoRA in the hot-swap slot
        self._slot_targets = tuple(slot_targets)
        self._slot_ready = False  # prepare_slot made the slot before compilation: LoRAs only ever swap into it
        self._slot_scalings: list[tuple[dict, float]] = []  # (a layer's scaling dict, its LoRA's own scaling)
        self._slot_layers: set[str] = set()  # "<component>.<layer>" the slot covers
        self._ip_loaded = False
        self._ip_values: list[tuple[torch.Tensor, torch.Tensor]] = []  # (a to_v_ip weight, its trained value)
        self._ip_scale: float | None = None  # folded into the to_v_ip weights now
        self._references: OrderedDict[str, Image.Image] = OrderedDict()
        self._embeddings: OrderedDict[tuple[str, ...], tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._default_scheduler = None
        self._schedulers: dict[str, object] = {}
        self.stats = AdapterStats()

    @property
    def resident(self) -> list[str]:
        return [self._slot] if self._slot else list(self._loras)

    # ---- the one entry point, called under the render lock ----------------------------------------------------

    def prepare(self, pipe, spec: RenderSpec, fetch: Fetch) -> Conditioning:
        started = time.perf_counter()
        loaded = self._lora(pipe, spec, fetch)
        kwargs, ip_seconds = self._ip_adapter(pipe, spec, fetch)
        name = self._scheduler(pipe, spec.scheduler)
        seconds = (time.perf_counter() - started) if (loaded or ip_seconds) else 0.0
        return Conditioning(kwargs=kwargs, load_seconds=seconds, scheduler=name)

    # ---- LoRA ---------------------------------------------------------------------------------------------------

    def _lora(self, pipe, spec: RenderSpec, fetch: Fetch) -> bool:
        """Activate the spec's LoRA (loading it when not resident) or none; True when it had to be loaded."""
        lora = spec.lora
        if self._slot_ready:
            return self._slot_lora(pipe, lora, fetch)
        if lora is None:
            if self.resident:
                pipe.disable_lora()
            return False
        adapter = f"{lora.name}-{lora.version}"
        loaded = False
        if self._use_hotswap(pipe):
            if self._slot != adapter:
                state = self._load_state(lora, fetch)
                self._load(pipe, state, HOTSWAP_SLOT, hotswap=self._slot is not None)
                self._slot, loaded = adapter, True
            else:
                self.stats.hits += 1
            active = HOTSWAP_SLOT
        else:
            if adapter in self._loras:
                self._loras.move_to_end(adapter)
                self.stats.hits += 1
            else:
                data = fetch(lora.object)
                self._make_room(pipe, len(data))
                self._load(pipe, _state_dict(data, lora.object), adapter, hotswap=False)
                self._loras[adapter] = len(data)
                loaded = True
            active = adapter
        pipe.enable_lora()
        pipe.set_adapters([active], adapter_weights=[float(lora.scale)])
        return loaded

    # ---- the slot of a compiled UNet ------------------------------------------------------------------------------

    def before_compile(self, pipe) -> dict:
        """What a compiled UNet needs in it before anything is traced (startup.prepare_sdxl): the LoRA slot and the
        IP-Adapter. Each on its own: one that fails leaves the other, and the runner serves; the facts for the
        start-up report."""
        facts: dict = {}
        for name, make, none in (("lora_slot_layers", self.prepare_slot, 0),
                                 ("ip_adapter_slot", self.prepare_ip_slot, False)):
            try:
                facts[name] = make(pipe)
            except Exception as exc:  # noqa: BLE001 - its renders then recompile; every other render is unchanged
                log.error("adapter_slot_failed", slot=name, error=repr(exc), exc_info=True)
                facts[name], facts[f"{name}_error"] = none, repr(exc)[:500]
        return facts

    def prepare_slot(self, pipe) -> int:
        """Make the LoRA slot, before the UNet is compiled (see the module docstring); the number of layers in it
        (0: hot swap is off by setting, so a compiled UNet recompiles for LoRAs)."""
        if self._hotswap is False or self._slot_ready:
            return 0
        state = slot_state(pipe, self._slot_targets, self._hotswap_rank)
        if not state:
            raise ValueError(f"SOUL_LORA_SLOT_TARGETS {','.join(self._slot_targets)} names no layer of this model")
        pipe.enable_lora_hotswap(target_rank=self._hotswap_rank)
        pipe.load_lora_weights(state, adapter_name=HOTSWAP_SLOT)
        self._slot_layers = {key.rsplit(".lora_", 1)[0] for key in state}
        pipe._soul_hotswap_ready = True
        self._slot_ready, self._slot = True, None
        self._keep_slot_scalings(pipe)
        self._scale_slot(0.0)
        layers = len(state) // 2
        log.info("lora_slot_prepared", layers=layers, rank=self._hotswap_rank, targets=list(self._slot_targets))
        return layers

    def _slot_lora(self, pipe, lora, fetch: Fetch) -> bool:
        if lora is None:
            self._scale_slot(0.0)  # the slot stays in the graph: at scale 0 it adds exactly zero
            return False
        adapter = f"{lora.name}-{lora.version}"
        loaded = False
        if self._slot != adapter:
            state = self._load_state(lora, fetch)
            rank = max((min(v.shape[:2]) for k, v in state.items() if ".lora_A." in k and v.ndim >= 2), default=0)
            if rank > self._hotswap_rank:  # peft would widen the slot's tensors: a recompile of every block
                raise self._misfit(adapter, f"its rank is {rank}")
            outside = sorted({k.rsplit(".lora_", 1)[0] for k in state if ".lora_" in k} - self._slot_layers)
            if outside:  # checked here: a refused hot swap in diffusers deletes the slot itself
                raise self._misfit(adapter, f"it trains {len(outside)} other layers ({', '.join(outside[:3])}, ...)")
            self._slot = None  # until the swap is whole: a failed one leaves weights of no known LoRA
            try:
                pipe.load_lora_weights(state, adapter_name=HOTSWAP_SLOT, hotswap=True)
            # peft refuses a swap it cannot make in place with one of these (a layer type it cannot swap raises a
            # RuntimeError subclass): the job fails with the reason, the slot is kept when it survived.
            except (ValueError, RuntimeError, KeyError) as exc:
                if HOTSWAP_SLOT in getattr(pipe.unet, "peft_config", {}):
                    self._scale_slot(0.0)
                else:  # gone with the failed swap: serve as an uncompiled-for-LoRA runner (LoRAs recompile)
                    log.error("lora_slot_lost", adapter=adapter, error=repr(exc))
                    self._slot_ready, self._slot_scalings = False, []
                raise self._misfit(adapter, str(exc)) from exc
            self._keep_slot_scalings(pipe)
            self._slot, loaded = adapter, True
            self.stats.loads += 1
            log.info("lora_loaded", adapter=adapter, hotswap=True, resident=self.resident)
        else:
            self.stats.hits += 1
        self._scale_slot(float(lora.scale))
        return loaded

    def _misfit(self, adapter: str, why: str) -> InvalidRenderSpec:
        return InvalidRenderSpec(f"the LoRA {adapter} does not fit this runner's compiled LoRA slot (layers "
                                 f"{','.join(self._slot_targets)}, rank <= {self._hotswap_rank}): {why}"[:1000])

    def _keep_slot_scalings(self, pipe) -> None:
        """Each slot layer's scaling as its LoRA set it (alpha / rank), what a render's scale multiplies."""
        self._slot_scalings = [
            (layer.scaling, float(layer.scaling[HOTSWAP_SLOT]))
            for component in COMPONENTS if getattr(pipe, component, None) is not None
            for layer in getattr(pipe, component).modules()
            if isinstance(getattr(layer, "scaling", None), dict) and HOTSWAP_SLOT in layer.scaling
        ]

    def _scale_slot(self, scale: float) -> None:
        """Written into the scaling tensors in place: the compiled graphs read them, nothing they guard changes."""
        for scaling, own in self._slot_scalings:
            value = scaling[HOTSWAP_SLOT]
            if isinstance(value, torch.Tensor):
                value.fill_(own * scale)
            else:  # a component that is not compiled may keep plain floats
                scaling[HOTSWAP_SLOT] = own * scale

    def _use_hotswap(self, pipe) -> bool:
        if self._hotswap is not None:
            return self._hotswap
        # torch.compile's wrapper of the whole UNet, or the runner's own compile (startup.prepare_sdxl: regional
        # compiles blocks in place, leaving no wrapper to see)
        return hasattr(pipe.unet, "_orig_mod") or bool(getattr(pipe, "_soul_compiled", None))

    def _load_state(self, lora, fetch: Fetch) -> dict:
        return _state_dict(fetch(lora.object), lora.object)

    def _load(self, pipe, state: dict, adapter: str, *, hotswap: bool) -> None:
        if hotswap is False and self._use_hotswap(pipe) and not getattr(pipe, "_soul_hotswap_ready", False):
            pipe.enable_lora_hotswap(target_rank=self._hotswap_rank)
            pipe._soul_hotswap_ready = True
        if not hotswap and adapter in getattr(pipe.unet, "peft_config", {}):
            pipe.delete_adapters(adapter)  # left by an earlier, failed load: load it afresh
        try:
            pipe.load_lora_weights(state, adapter_name=adapter, hotswap=hotswap)
        except (ValueError, RuntimeError, KeyError) as exc:
            raise InvalidRenderSpec(f"the LoRA {adapter} does not fit this model: {exc}") from exc
        self.stats.loads += 1
        log.info("lora_loaded", adapter=adapter, hotswap=hotswap, resident=self.resident)

    def _make_room(self, pipe, incoming: int) -> None:
        """Evict least recently used adapters until one more fits in count and bytes."""
        while self._loras and (len(self._loras) >= self._resident_max
                               or sum(self._loras.values()) + incoming > self._budget):
            victim, _ = self._loras.popitem(last=False)
            pipe.delete_adapters(victim)
            self.stats.evictions += 1
            log.info("lora_evicted", adapter=victim)

    # ---- IP-Adapter ---------------------------------------------------------------------------------------------

    def prepare_ip_slot(self, pipe) -> bool:
        """Load the IP-Adapter before the UNet is compiled, so the graphs are traced with it (False: this runner has
        none)."""
        if not self._has_ip_adapter():
            return False
        if not self._ip_loaded:
            self._load_ip_adapter(pipe)
        return True

    def _has_ip_adapter(self) -> bool:
        return self._ip_model is not None or self._tiny_ip

    def _ip_adapter(self, pipe, spec: RenderSpec, fetch: Fetch) -> tuple[dict, float]:
        """The pipeline's `ip_adapter_image_embeds` for this render (none while no IP-Adapter is loaded) and the
        seconds spent loading the adapter or encoding a set seen for the first time."""
        if not spec.references and not self._ip_loaded:
            return {}, 0.0
        started = time.perf_counter()
        loaded = False
        if not self._ip_loaded:
            if not self._has_ip_adapter():
                raise InvalidRenderSpec("this runner has no IP-Adapter for reference images: SOUL_IP_ADAPTER_MODEL "
                                        "(a local folder with its weights and image_encoder/) is not set")
            self._load_ip_adapter(pipe)
            loaded = True
        # no references: a blank image's embeddings at scale 0, which add exactly zero (the base model's render)
        names = tuple(sorted(spec.references))
        encoded = names not in self._embeddings
        positive, negative = (_tiled(e) for e in self._embeddings_of(pipe, names, fetch))
        self._scale_ip(float(spec.identity_scale) if names else 0.0)
        guided = spec.guidance > 1 and pipe.unet.config.time_cond_proj_dim is None  # the pipeline's own test
        embeds = torch.cat([negative, positive]) if guided else positive
        seconds = time.perf_counter() - started if loaded or (encoded and names) else 0.0
        return {"ip_adapter_image_embeds": [embeds]}, seconds

    def _embeddings_of(self, pipe, names: tuple[str, ...], fetch: Fetch) -> tuple[torch.Tensor, torch.Tensor]:
        """(positive, negative) image embeddings of a reference set, one per image (a blank one for no set); kept
        per set."""
        kept = self._embeddings.get(names)
        if kept is not None:
            self._embeddings.move_to_end(names)
            return kept
        from diffusers.models.embeddings import ImageProjection

        images = [self._reference(name, fetch) for name in names] or [Image.new("RGB", (64, 64))]
        projection = pipe.unet.encoder_hid_proj.image_projection_layers[0]
        kept = pipe.encode_image(images, pipe.device, 1, not isinstance(projection, ImageProjection))
        self._embeddings[names] = kept
        while len(self._embeddings) > _EMBEDDING_CACHE:
            self._embeddings.popitem(last=False)
        return kept

    def _scale_ip(self, scale: float) -> None:
        """The identity scale, folded into the to_v_ip weights in place (see the module docstring)."""
        if scale == self._ip_scale:
            return
        with torch.no_grad():
            for weight, trained in self._ip_values:
                torch.mul(trained, scale, out=weight)
        self._ip_scale = scale

    def _load_ip_adapter(self, pipe) -> None:
        from diffusers.models.attention_processor import IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0

        if self._ip_model is None:
            from gpu_runner.pipelines.tiny_adapters import IP_ADAPTER_WEIGHTS, ensure_tiny_ip_adapter

            folder, weight_name = ensure_tiny_ip_adapter(self._cache_dir, pipe.unet), IP_ADAPTER_WEIGHTS
        else:
            folder, weight_name = Path(self._ip_model).expanduser(), self._ip_weight_name
            if not (folder / weight_name).is_file() or not (folder / "image_encoder").is_dir():
                raise FileNotFoundError(f"SOUL_IP_ADAPTER_MODEL must be a folder with {weight_name} and "
                                        f"image_encoder/, got {folder}")
        pipe.load_ip_adapter(str(folder), subfolder="", weight_name=weight_name,
                             image_encoder_folder="image_encoder", local_files_only=True)
        if pipe.image_encoder is not None:
            pipe.image_encoder.to(device=pipe.device, dtype=pipe.unet.dtype)
        self._ip_values = []
        for processor in pipe.unet.attn_processors.values():
            if isinstance(processor, (IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0)):
                processor.scale = [1.0] * len(processor.scale)  # never changed again: the scale is in the weights
                self._ip_values += [(layer.weight, layer.weight.detach().clone()) for layer in processor.to_v_ip]
        self._ip_scale = None
        self._ip_loaded = True
        self.stats.ip_adapter_loads += 1
        log.info("ip_adapter_loaded", model=self._ip_model or "tiny")

    def _reference(self, name: str, fetch: Fetch) -> Image.Image:
        image = self._references.get(name)
        if image is None:
            image = Image.open(io.BytesIO(fetch(name)))
            image.load()
            image = image.convert("RGB")
            self._references[name] = image
            while len(self._references) > _REFERENCE_CACHE:
                self._references.popitem(last=False)
        else:
            self._references.move_to_end(name)
        return image

    # ---- schedulers ---------------------------------------------------------------------------------------------

    def _scheduler(self, pipe, name: str | None) -> str:
        if self._default_scheduler is None:
            self._default_scheduler = pipe.scheduler
        if name is None:
            pipe.scheduler = self._default_scheduler
            return scheduler_name(self._default_scheduler)
        if name not in SCHEDULER_CLASSES:
            raise InvalidRenderSpec(f"unknown scheduler {name!r}")
        if name not in self._schedulers:
            cls, overrides = SCHEDULER_CLASSES[name]
            self._schedulers[name] = cls.from_config(self._default_scheduler.config, **overrides)
        pipe.scheduler = self._schedulers[name]
        return name


def slot_state(pipe, targets: tuple[str, ...], rank: int) -> dict[str, torch.Tensor]:
    """Zero LoRA weights (diffusers/peft layout) at `rank` on every linear layer of the pipeline's UNet and text
    encoders whose name ends with one of `targets` (a name or a dotted tail such as `to_out.0`)."""
    state: dict[str, torch.Tensor] = {}
    for component in COMPONENTS:
        module = getattr(pipe, component, None)
        if module is None:
            continue
        weight = next(module.parameters())
        for name, (features_in, features_out) in linear_table(module).items():
            if ".lora_" in name:  # a layer of an adapter loaded before
                continue
            name = name.removesuffix(".base_layer")  # a layer peft wrapped before: its adapters' keys use this name
            if not any(name == t or name.endswith("." + t) for t in targets):
                continue
            kw = {"dtype": weight.dtype, "device": weight.device}
            state[f"{component}.{name}.lora_A.weight"] = torch.zeros(rank, features_in, **kw)
            state[f"{component}.{name}.lora_B.weight"] = torch.zeros(features_out, rank, **kw)
    return state


def _tiled(embeddings: torch.Tensor) -> torch.Tensor:
    """One embedding per image -> IP_IMAGE_SLOTS of them, each image equally often, in the layout
    `ip_adapter_image_embeds` takes: (1, images, ...)."""
    return embeddings.repeat_interleave(IP_IMAGE_SLOTS // embeddings.shape[0], dim=0)[None]


def scheduler_name(scheduler) -> str:
    """The allow-list name of a scheduler instance, else its class name."""
    for name, (cls, overrides) in SCHEDULER_CLASSES.items():
        if type(scheduler) is cls and all(scheduler.config.get(k) == v for k, v in overrides.items()) and (
                name != "dpmpp_2m" or not scheduler.config.get("use_karras_sigmas")):
            return name
    return type(scheduler).__name__


def _state_dict(data: bytes, name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    try:
        return load(data)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types: the job's input is bad
        raise InvalidRenderSpec(f"the LoRA {name} is not a readable safetensors file: {exc}") from exc
