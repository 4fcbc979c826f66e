"""The deploy's static checks (infra/check.sh: checkov + the python-hcl2 wiring check) pass on the repository,
and the wiring check catches each kind of mistake it exists for, on a broken copy. Also the functions' source
archive: it ships soul_common and refuses to build without an entry point that Terraform deploys.

The first run installs checkov and python-hcl2 (pinned, PyPI) into .soul/tools/: a few minutes on a fresh
machine, then cached."""

from __future__ import annotations

import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

CHECK = REPO / "infra" / "check.sh"


def run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=900)


@pytest.mark.timeout(900)
def test_checkov_and_wiring_pass():
    result = run(str(CHECK))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert output.count("Failed checks: 0") == 2, output[-4000:]
    assert "wiring: ok" in output


@pytest.fixture
def broken_copy(tmp_path):
    """A copy of what the wiring check reads, to break one thing in."""
    for part in ("infra", "schemas", "gpu_runner", "soul_cli"):
        shutil.copytree(REPO / part, tmp_path / part, ignore=shutil.ignore_patterns("build", "__pycache__", "configs"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    return tmp_path


BREAKS = {
    "an undeclared reference": ("infra/terraform/scheduler.tf", "google_service_account.scheduler.email",
                                "google_service_account.schedulr.email", "`google_service_account.schedulr` is referenced"),
    "a grant the VMs need, missing from depends_on": (
        "infra/terraform/runner.tf", "    google_storage_bucket_iam_member.runner_media,\n", "",
        "does not depend_on google_storage_bucket_iam_member.runner_media"),
    "the background lane not counted": (
        "infra/terraform/pubsub.tf", "topic = google_pubsub_topic.jobs_background.id", "topic = google_pubsub_topic.jobs.id",
        "lane background is not"),
    "the scheduler calling another function": (
        "infra/terraform/scheduler.tf", "uri         = google_cloudfunctions2_function.reconcile",
        "uri         = google_cloudfunctions2_function.api", "no Cloud Scheduler job calls the `reconcile` function"),
    "the autoscaler targeting nothing": (
        "infra/terraform/runner.tf", "target = google_compute_region_instance_group_manager.runner.id",
        'target = "soul-runner"', "the autoscaler does not target"),
    "a package the image COPYs left out by the ignore-file": (
        "infra/runner.Dockerfile.dockerignore", "!soul_cli/\n", "", "COPYs soul_cli, which"),
    "a COPYed package the install leaves out": (
        "pyproject.toml", '"soul_cli*"', '"soul_clix*"', "does not include it"),
    "a skip of a check that must pass": (
        "infra/terraform/runner.tf", "  metadata = {\n", "  #checkov:skip=CKV_GCP_32:because\n  metadata = {\n",
        "skips CKV_GCP_32, a check that must pass"),
    "a skip without a reason": (
        "infra/terraform/network.tf", "  count = var.runner_cloud_nat ? 1 : 0\n\n  name    = \"soul-runner\"\n  region",
        "  count = var.runner_cloud_nat ? 1 : 0\n  #checkov:skip=CKV_GCP_76\n  name    = \"soul-runner\"\n  region",
        "skips CKV_GCP_76 without a reason"),
    "project SSH keys allowed": (
        "infra/terraform/runner.tf", 'block-project-ssh-keys    = "TRUE"', 'block-project-ssh-keys    = "FALSE"',
        "block-project-ssh-keys"),
}


@pytest.mark.timeout(900)
@pytest.mark.parametrize("what", sorted(BREAKS))
def test_wiring_check_catches(broken_copy, what):
    path, old, new, expected = BREAKS[what]
    target = broken_copy / path
    text = target.read_text()
    assert old in text, f"the break no longer applies: {old!r} is not in {path}"
    target.write_text(text.replace(old, new))
    result = run(str(CHECK), "wiring", str(broken_copy))
    assert result.returncode == 1, result.stdout + result.stderr
    assert expected in result.stdout, result.stdout


@pytest.fixture
def source_tree(tmp_path):
    """What build_functions_source.sh reads, with soul_common and the four entry points present."""
    for part in ("functions", "schemas"):
        shutil.copytree(REPO / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "infra").mkdir()
    shutil.copy(REPO / "infra" / "build_functions_source.sh", tmp_path / "infra")
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    if not (REPO / "soul_common").is_dir():
        (tmp_path / "soul_common").mkdir()
        (tmp_path / "soul_common" / "__init__.py").write_text('"""Shared code."""\n')
    else:
        shutil.copytree(REPO / "soul_common", tmp_path / "soul_common", ignore=shutil.ignore_patterns("__pycache__"))
    main = tmp_path / "functions" / "main.py"
    text = main.read_text()
    for target in ("webhooks", "reconcile"):
        if f"def {target}(" not in text:
            text += f"\n\ndef {target}(request):\n    return 'ok'\n"
    main.write_text(text)
    return tmp_path


def test_functions_archive_ships_soul_common_and_every_target(source_tree):
    out = source_tree / "a.zip"
    first = run("bash", str(source_tree / "infra" / "build_functions_source.sh"), str(out), cwd=source_tree)
    assert first.returncode == 0, first.stderr
    with zipfile.ZipFile(out) as archive:
        names = set(archive.namelist())
        shim = archive.read("main.py").decode()
    assert "soul_common/__init__.py" in names and "functions/main.py" in names
    assert not any(n.startswith(("gpu_runner/", "emulators/", "tests/")) for n in names)
    assert "from functions.main import api_async, ingest, reconcile, webhooks" in shim
    again = run("bash", str(source_tree / "infra" / "build_functions_source.sh"), str(source_tree / "b.zip"), cwd=source_tree)
    assert again.returncode == 0 and out.read_bytes() == (source_tree / "b.zip").read_bytes()  # deterministic


def test_functions_archive_refuses_a_missing_target(source_tree):
    main = source_tree / "functions" / "main.py"
    main.write_text(main.read_text().replace("def webhooks(", "def not_webhooks("))
    result = run("bash", str(source_tree / "infra" / "build_functions_source.sh"), str(source_tree / "a.zip"), cwd=source_tree)
    assert result.returncode != 0
    assert "functions/main.py defines no webhooks" in result.stderr
