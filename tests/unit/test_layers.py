"""The layering is checked, not hoped for (docs/CONTRIBUTING.md says what goes where):

- `functions/core/` holds pure rules: no Google client, no Flask, nothing of the outer layers;
- `functions/services/` holds the use cases: no Flask, no Google client, no HTTP layer;
- only the adapters talk to Firestore: the gateway `soul_common/firestore.py` is the one module that imports the
  Firestore client, and only adapter modules (and the wiring that builds the gateway) import the gateway;
- only `functions/adapters/` imports Google Cloud clients (Pub/Sub, GCS, IAM credentials) and makes outbound HTTP;
- `soul_common/` imports nothing of either deployable;
- only `gpu_runner/pipelines/` imports torch, diffusers, transformers, accelerate (and safetensors' torch API, peft,
  torchao); the runner never imports `functions/`, and its image copies none of it; the runner's stages and rules
  hold no cloud client.

Each rule is a small table; `test_every_rule_can_fail` proves each one catches a violation."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Rule:
    name: str
    applies_to: tuple[str, ...]  # path prefixes (relative to the repository) the rule constrains
    forbidden: tuple[str, ...]  # module prefixes those files must not import
    exempt: tuple[str, ...] = ()  # files (or prefixes) allowed to break it, each for a reason in its docstring


MODEL_LIBRARIES = ("torch", "diffusers", "transformers", "accelerate", "safetensors.torch", "peft", "torchao")
GOOGLE_CLIENTS = ("google.cloud", "google.auth", "google.oauth2", "google.pubsub_v1", "urllib3", "requests",
                  "certifi")
RULES = (
    Rule("core is pure", ("functions/core/",),
         ("google", "flask", "werkzeug", "functions_framework", "functions.adapters", "functions.services",
          "functions.http", "functions.wiring", "functions.main", "soul_common.firestore")),
    Rule("services know no HTTP and no client", ("functions/services/",),
         ("flask", "werkzeug", "functions_framework", "google", "functions.http", "functions.main",
          "soul_common.firestore", *GOOGLE_CLIENTS)),
    # emulators/ are the local stand-ins themselves (they reset the emulator, the local autoscaler reads its
    # backlog there): not part of a deployable.
    Rule("only the gateway imports the Firestore client", ("functions/", "gpu_runner/", "soul_common/", "soul_cli/"),
         ("google.cloud.firestore", "google.cloud.firestore_v1"),
         # the two clients.py create the raw clients the gateway wraps; nothing else may hold one.
         exempt=("soul_common/firestore.py", "functions/adapters/clients.py", "gpu_runner/adapters/clients.py",
                 "soul_common/reconcile_function.py")),
    Rule("only adapters use the gateway", ("functions/", "soul_common/", "gpu_runner/"),
         ("soul_common.firestore",),
         # the wiring of each deployable builds the gateway it hands the adapters
         exempt=("functions/adapters/", "functions/wiring.py", "gpu_runner/adapters/", "gpu_runner/worker.py",
                 "soul_common/reconciler.py", "soul_common/reconcile_function.py", "soul_common/firestore.py",
                 "soul_common/rollups.py", "soul_common/reservations.py")),  # shared documents of both deployables
    Rule("only adapters hold cloud clients", ("functions/",),
         GOOGLE_CLIENTS,
         exempt=("functions/adapters/",)),
    Rule("shared plumbing depends on neither deployable", ("soul_common/", "schemas/"),
         ("functions", "gpu_runner", "emulators", "soul_cli")),
    Rule("the functions never load models", ("functions/", "schemas/", "soul_common/"),
         ("torch", "diffusers", "transformers", "accelerate", "gpu_runner")),
    Rule("only pipelines/ imports the model libraries", ("gpu_runner/", "functions/", "soul_common/", "schemas/",
                                                         "emulators/", "soul_cli/"),
         MODEL_LIBRARIES, exempt=("gpu_runner/pipelines/",)),
    Rule("the runner never imports the functions", ("gpu_runner/",), ("functions",)),
    Rule("runner stages and rules hold no cloud client", ("gpu_runner/stages/", "gpu_runner/pipelines/",
                                                          "gpu_runner/errors.py", "gpu_runner/leasing.py"),
         ("google.cloud", "google.auth", "soul_common.firestore")),
)


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, lazily inside functions too (`from a import b` gives `a` and `a.b`)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _matches(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def violations(rule: Rule, files: dict[str, set[str]]) -> list[str]:
    found = []
    for rel, modules in sorted(files.items()):
        if not rel.startswith(rule.applies_to) or rel.startswith(rule.exempt):
            continue
        bad = sorted(m for m in modules if any(_matches(m, f) for f in rule.forbidden))
        if bad:
            found.append(f"{rel}: {', '.join(bad)}")
    return found


@pytest.fixture(scope="module")
def product_files() -> dict[str, set[str]]:
    files = {}
    for package in ("functions", "gpu_runner", "soul_common", "schemas", "emulators", "soul_cli"):  # product code
        for path in (ROOT / package).rglob("*.py"):
            files[path.relative_to(ROOT).as_posix()] = imports_of(path)
    return files


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_layer_rule_holds(rule: Rule, product_files):
    assert violations(rule, product_files) == []


def test_no_module_outside_the_adapters_reaches_a_client_through_the_wiring():
    """`Services.clients` holds the raw cloud clients for the wiring and the adapters only."""
    offenders = []
    for path in (ROOT / "functions").rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(("functions/adapters/", "functions/wiring.py", "functions/main.py")):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in {"firestore", "storage", "publisher"} \
                    and isinstance(node.value, ast.Attribute) and node.value.attr == "clients":
                offenders.append(f"{rel}:{node.lineno}")
    assert offenders == []


def test_the_runner_image_carries_no_functions_code():
    copies = [line.split()[1] for line in (ROOT / "infra" / "runner.Dockerfile").read_text().splitlines()
              if line.startswith("COPY") and "--from" not in line]
    assert copies and not any(c.rstrip("/") == "functions" or c.startswith("functions/") for c in copies)


@pytest.mark.parametrize(("rule", "file", "source"), [
    (RULES[0], "functions/core/x.py", "from google.cloud import firestore"),
    (RULES[0], "functions/core/x.py", "def f():\n    import flask"),
    (RULES[1], "functions/services/x.py", "import flask"),
    (RULES[1], "functions/services/x.py", "from google.api_core import exceptions"),
    (RULES[2], "functions/http/x.py", "from google.cloud.firestore_v1.base_query import FieldFilter"),
    (RULES[3], "functions/services/x.py", "from soul_common import firestore"),
    (RULES[4], "functions/http/x.py", "from google.cloud import storage"),
    (RULES[5], "soul_common/x.py", "from functions.core import keys"),
    (RULES[6], "functions/services/x.py", "import torch"),
    (RULES[7], "gpu_runner/stages/x.py", "def f():\n    from diffusers import StableDiffusionXLPipeline"),
    (RULES[7], "gpu_runner/worker.py", "from safetensors.torch import save_file"),
    (RULES[8], "gpu_runner/x.py", "from functions.core import keys"),
    (RULES[9], "gpu_runner/stages/x.py", "from google.cloud import storage"),
    (RULES[3], "gpu_runner/stages/x.py", "from soul_common.firestore import Db"),
])
def test_every_rule_can_fail(rule: Rule, file: str, source: str, tmp_path):
    path = tmp_path / "x.py"
    path.write_text(source)
    assert violations(rule, {file: imports_of(path)}) != []
