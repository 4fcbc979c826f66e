"""CLIP's tokenizer files, rebuilt offline, and the SDXL config folder that single-file checkpoints are loaded
with: SDXL checkpoints carry no tokenizer vocabulary and it cannot be downloaded here, so it is rebuilt from
OpenAI's BPE merges file (shipped in `configs/clip_bpe/`, as packaged by open_clip_torch). Both the SDXL loader
and the tiny models build on these; folders are published atomically (`publish_folder`)."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

SHIPPED_CONFIGS = Path(__file__).parent / "configs" / "sdxl"
_CONFIG_CACHE_NAME = "sdxl-base-1.0-configs-v1"  # the shipped configs plus generated tokenizer files

CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"
_CLIP_MERGES = 49152 - 256 - 2  # OpenAI CLIP keeps this many merges: a vocabulary of 49408 with the specials
_CLIP_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
_CLIP_BPE_PACKAGES = ("open_clip", "clip")  # PyPI: open_clip_torch, clip-anytorch (OpenAI's clip, repackaged)


def bytes_to_unicode() -> dict[int, str]:
    """OpenAI's byte-to-character table for byte-level BPE, in its order: printable bytes map to themselves, the
    other bytes to unused code points from 256 on, so every byte is a visible character."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(others)}}


def clip_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """CLIP's vocabulary in OpenAI's order: the 256 byte characters, the same with the end-of-word mark,
    one token per merge, then the two special tokens."""
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(pair) for pair in merges] + [CLIP_BOS, CLIP_EOS]
    return {token: index for index, token in enumerate(tokens)}


def find_clip_bpe() -> Path | None:
    """OpenAI's BPE merges file: the copy shipped with the runner (configs/clip_bpe/, from open_clip_torch), else
    one inside an installed package, found without importing the package."""
    shipped = Path(__file__).resolve().parent / "configs" / "clip_bpe" / _CLIP_BPE_FILE
    if shipped.is_file():
        return shipped
    for package in _CLIP_BPE_PACKAGES:
        spec = importlib.util.find_spec(package)
        for location in (spec.submodule_search_locations or []) if spec else []:
            candidate = Path(location) / _CLIP_BPE_FILE
            if candidate.is_file():
                return candidate
    return None


def build_clip_tokenizer_files(dest: Path, bpe_path: Path | None = None) -> None:
    """Write the `vocab.json` and `merges.txt` of CLIP's tokenizer into `dest` from OpenAI's gzip'd merges file,
    the way OpenAI's `SimpleTokenizer` builds its vocabulary (and the same files Hugging Face publishes)."""
    bpe_path = bpe_path or find_clip_bpe()
    if bpe_path is None:
        raise FileNotFoundError(
            f"CLIP's BPE vocabulary ({_CLIP_BPE_FILE}) is needed to load a single-file SDXL checkpoint; "
            "install open_clip_torch (it ships the file), or load a diffusers folder instead"
        )
    lines = gzip.decompress(Path(bpe_path).read_bytes()).decode("utf-8").split("\n")
    # Line 0 is a version header; OpenAI keeps the first _CLIP_MERGES merges after it.
    merges = [tuple(line.split()) for line in lines[1 : _CLIP_MERGES + 1] if line.strip()]
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "vocab.json").write_text(json.dumps(clip_vocab(merges), ensure_ascii=False), encoding="utf-8")
    merges_text = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    (dest / "merges.txt").write_text(merges_text, encoding="utf-8")


def sdxl_config_folder(cache_dir: Path, bpe_path: Path | None = None) -> Path:
    """A complete diffusers config folder for SDXL base 1.0 (no weights) under `cache_dir`: the shipped configs
    plus the tokenizer files rebuilt from CLIP's BPE merges (`bpe_path`, default: the installed package's).
    Built once, published atomically."""
    folder = Path(cache_dir) / _CONFIG_CACHE_NAME
    if (folder / "model_index.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        shutil.copytree(SHIPPED_CONFIGS, staging, dirs_exist_ok=True)
        for tokenizer in ("tokenizer", "tokenizer_2"):
            build_clip_tokenizer_files(staging / tokenizer, bpe_path)
        publish_folder(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def publish_folder(staging: Path, dest: Path) -> None:
    """Move a completely written folder into place in one step (rename is atomic on one filesystem), so readers
    see no folder or a whole one. Losing the race to another builder of the same folder is fine."""
    try:
        os.rename(staging, dest)
    except OSError:
        if not (dest / "model_index.json").is_file():
            raise
