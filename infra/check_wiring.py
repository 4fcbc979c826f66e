"""Static wiring check of the deploy, run by infra/check.sh with python-hcl2 (no terraform binary, no GCP).

checkov judges each resource alone; this judges how they connect, the mistakes a first `terraform apply` or
`docker build` would find the hard way:
- every reference (resource, data source, var., local.) in the Terraform resolves to something declared;
- the runner group depends on every IAM grant its service account gets (first apply: no VM before its rights);
- the autoscaler targets the runner group and counts the backlog of BOTH lanes, with the names of
  schemas/names.py; the health check, autohealing and probers' firewall agree on the health port;
- Cloud Scheduler calls the `reconcile` function with OIDC as an account that may invoke it; the push
  subscriptions feed `ingest` and `webhooks`; every deployed entry point is one the source archive exports;
- the runner image's ignore-file lets through every path the Dockerfile COPYs, and the image carries every
  first-party package the runner imports; the functions' archive carries soul_common.

Usage: python infra/check_wiring.py [REPO_ROOT]   (exit 1 and one line per problem when something is off)"""

from __future__ import annotations

import ast
import fnmatch
import re
import sys
import tomllib
from pathlib import Path

import hcl2

REF = re.compile(r"(?<![\w.])(data\.[a-z0-9_]+\.[a-z0-9_-]+|var\.[a-z0-9_]+|local\.[a-z0-9_]+|google_[a-z0-9_]+\.[a-z0-9_]+)")
PROBER_RANGES = {"35.191.0.0/16", "130.211.0.0/22"}
SKIP = re.compile(r"#\s*checkov:skip=([A-Z0-9_]+)(?::(.*))?")
# checkov checks that must pass, never be skipped: public access, encryption, IAM breadth, SSH keys, public IPs.
MUST_PASS = {
    "CKV_GCP_32", "CKV_GCP_40", "CKV_GCP_38",  # project SSH keys, public IPs, disk encryption
    "CKV_GCP_28", "CKV_GCP_29", "CKV_GCP_114",  # bucket public access, uniform access, public access prevention
    "CKV_GCP_83", "CKV_GCP_84",  # CMEK on topics and the image repository
    "CKV_GCP_41", "CKV_GCP_42", "CKV_GCP_44", "CKV_GCP_45", "CKV_GCP_46", "CKV_GCP_49",  # IAM breadth
}
BACKLOG_METRIC = "pubsub.googleapis.com/subscription/num_undelivered_messages"


def unquote(value) -> str:
    return value[1:-1] if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"' else value


class Terraform:
    """The parsed module: resources[type][name] -> body, data, variables, locals (raw expression strings)."""

    def __init__(self, directory: Path):
        self.resources: dict[str, dict[str, dict]] = {}
        self.data: dict[str, dict[str, dict]] = {}
        self.variables: dict[str, dict] = {}
        self.locals: dict[str, object] = {}
        self.files: dict[str, dict] = {}
        for path in sorted(directory.glob("*.tf")):
            with path.open() as handle:
                parsed = hcl2.load(handle)
            self.files[path.name] = parsed
            for kind, target in (("resource", self.resources), ("data", self.data)):
                for block in parsed.get(kind, []):
                    for rtype, named in block.items():
                        for name, body in named.items():
                            target.setdefault(unquote(rtype), {})[unquote(name)] = body
            for block in parsed.get("variable", []):
                for name, body in block.items():
                    self.variables[unquote(name)] = body
            for block in parsed.get("locals", []):
                self.locals.update({k: v for k, v in block.items() if not k.startswith("__")})

    def resource(self, address: str) -> dict:
        rtype, name = address.split(".", 1)
        return self.resources.get(rtype, {}).get(name, {})

    def declared(self, ref: str) -> bool:
        head, _, rest = ref.partition(".")
        if head == "var":
            return rest in self.variables
        if head == "local":
            return rest in self.locals
        if head == "data":
            rtype, _, name = rest.partition(".")
            return name in self.data.get(rtype, {})
        return rest in self.resources.get(head, {})


def strings(node, skip=("__comments__",)):
    """Every string in a parsed block, comments and `moved { from = ... }` left out."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, list):
        for item in node:
            yield from strings(item, skip)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key not in skip:
                yield from strings(value, skip)


def refs(node) -> set[str]:
    found: set[str] = set()
    for text in strings(node):
        if "${" in text:
            found.update(REF.findall(text))
    return found


def block(body: dict, name: str) -> dict:
    value = body.get(name) or [{}]
    return value[0] if isinstance(value, list) else value


def check_references(tf: Terraform) -> list[str]:
    problems = []
    for filename, parsed in tf.files.items():
        for kind, blocks in parsed.items():
            if kind in ("moved", "__comments__"):
                continue
            for ref in sorted(refs(blocks)):
                if not tf.declared(ref):
                    problems.append(f"{filename}: `{ref}` is referenced but not declared")
    return problems


def check_runner_group(tf: Terraform) -> list[str]:
    problems = []
    mig = tf.resource("google_compute_region_instance_group_manager.runner")
    if not mig:
        return ["no google_compute_region_instance_group_manager.runner (regional runner group)"]
    depends = refs(mig.get("depends_on", []))
    for rtype, named in tf.resources.items():
        if not rtype.endswith("_iam_member"):
            continue
        for name, body in named.items():
            if "google_service_account.runner" in refs(body.get("member", "")) and f"{rtype}.{name}" not in depends:
                problems.append(f"the runner group does not depend_on {rtype}.{name} (a grant its VMs need)")
    healing = block(mig, "auto_healing_policies")
    if "google_compute_health_check.runner" not in refs(healing.get("health_check", "")):
        problems.append("the runner group's auto_healing_policies do not use google_compute_health_check.runner")
    check = tf.resource("google_compute_health_check.runner")
    port = block(check, "http_health_check").get("port")
    if port != "${var.runner_health_port}":
        problems.append(f"the health check probes port {port!r}, not var.runner_health_port")
    firewall = tf.resource("google_compute_firewall.runner_health_probers")
    if {unquote(r) for r in firewall.get("source_ranges", [])} != PROBER_RANGES:
        problems.append("the probers' firewall rule does not admit exactly Google's health-check ranges")
    if "var.runner_health_port" not in refs(block(firewall, "allow")):
        problems.append("the probers' firewall rule does not open var.runner_health_port")
    template = tf.resource("google_compute_instance_template.runner")
    if unquote(template.get("metadata", {}).get("block-project-ssh-keys", "")) not in ("TRUE", "true"):
        problems.append("the runner template does not set metadata block-project-ssh-keys")
    if "access_config" in str(template.get("network_interface", "")):
        problems.append("the runner template gives VMs an external IP (access_config)")
    return problems


def check_autoscaler(tf: Terraform, names: dict[str, str]) -> list[str]:
    problems = []
    scaler = tf.resource("google_compute_region_autoscaler.runner")
    if "google_compute_region_instance_group_manager.runner" not in refs(scaler.get("target", "")):
        return ["the autoscaler does not target google_compute_region_instance_group_manager.runner"]
    policy = block(scaler, "autoscaling_policy")
    metrics = [m for d in policy.get("dynamic", []) for k, m in d.items() if unquote(k) == "metric"]
    if len(metrics) != 1 or metrics[0].get("for_each") != "${local.runner_subscriptions}":
        return ["the autoscaler's metrics are not one dynamic block over local.runner_subscriptions"]
    content = block(metrics[0], "content")
    if unquote(content.get("name")) != BACKLOG_METRIC or "single_instance_assignment" not in content:
        problems.append(f"the autoscaler metric is not {BACKLOG_METRIC} with single_instance_assignment")
    if "google_pubsub_subscription.runner" not in refs(tf.locals.get("runner_subscriptions", "")):
        problems.append("local.runner_subscriptions is not built from google_pubsub_subscription.runner")
    lanes = tf.locals.get("runner_lanes", "")
    expected = {
        "interactive": ("sub_runner", "SUB_RUNNER", "jobs", "TOPIC_JOBS"),
        "background": ("sub_runner_background", "SUB_RUNNER_BACKGROUND", "jobs_background", "TOPIC_JOBS_BACKGROUND"),
    }
    for lane, (sub_local, sub_name, topic_res, topic_name) in expected.items():
        wiring = lanes.get(lane, {}) if isinstance(lanes, dict) else {}
        if (wiring.get("subscription"), wiring.get("topic")) != (f"${{local.{sub_local}}}", f"${{google_pubsub_topic.{topic_res}.id}}"):
            problems.append(f"lane {lane} is not local.{sub_local} on google_pubsub_topic.{topic_res} in local.runner_lanes")
        if unquote(tf.locals.get(sub_local)) != names[sub_name]:
            problems.append(f"local.{sub_local} is not {names[sub_name]!r} (schemas/names.py {sub_name})")
        topic = tf.resource(f"google_pubsub_topic.{topic_res}")
        topic_local = topic.get("name", "").removeprefix("${local.").removesuffix("}")
        if unquote(tf.locals.get(topic_local)) != names[topic_name]:
            problems.append(f"google_pubsub_topic.{topic_res} is not named {names[topic_name]!r} ({topic_name})")
    if tf.resource("google_pubsub_subscription.runner").get("for_each") != "${local.runner_lanes}":
        problems.append("google_pubsub_subscription.runner is not one subscription per lane (for_each local.runner_lanes)")
    minimum = tf.variables.get("runner_min_replicas", {}).get("default")
    if minimum != 0:
        problems.append(f"runner_min_replicas defaults to {minimum!r}, not 0 (scale to zero)")
    return problems


def functions_by_entry_point(tf: Terraform) -> dict[str, str]:
    return {
        unquote(block(body, "build_config").get("entry_point")): name
        for name, body in tf.resources.get("google_cloudfunctions2_function", {}).items()
    }


def invokers(tf: Terraform, function: str) -> set[str]:
    """Service accounts (resource addresses) holding run.invoker on a function."""
    found = set()
    for body in tf.resources.get("google_cloud_run_v2_service_iam_member", {}).values():
        if f"google_cloudfunctions2_function.{function}" in refs(body) and unquote(body.get("role")) == "roles/run.invoker":
            found.update(r for r in refs(body.get("member", "")) if r.startswith("google_service_account."))
    return found


def subscription_topics(tf: Terraform, body: dict) -> set[str]:
    """The topics a subscription block reads: its own, or, for `for_each = local.X` with `topic = each.value.topic`,
    every topic the entries of local.X name."""
    each = re.fullmatch(r"\$\{local\.([a-z0-9_]+)\}", str(body.get("for_each", "")))
    if each and "each.value" in str(body.get("topic", "")):
        return {r for r in refs(str(tf.locals.get(each.group(1), ""))) if r.startswith("google_pubsub_topic.")}
    return set(refs(body.get("topic")))


def check_functions(tf: Terraform, targets: tuple[str, ...]) -> list[str]:
    problems = []
    entry = functions_by_entry_point(tf)
    if set(entry) != set(targets):
        problems.append(f"deployed entry points {sorted(entry)} differ from the archive's targets {sorted(targets)}")
    reconcile = entry.get("reconcile")
    jobs = tf.resources.get("google_cloud_scheduler_job", {})
    calls = [b for b in jobs.values() if f"google_cloudfunctions2_function.{reconcile}" in refs(block(b, "http_target").get("uri", ""))]
    if not reconcile or not calls:
        problems.append("no Cloud Scheduler job calls the `reconcile` function")
    for job in calls:
        oidc = block(block(job, "http_target"), "oidc_token")
        callers = {r for r in refs(oidc.get("service_account_email", "")) if r.startswith("google_service_account.")}
        if not callers or not callers <= invokers(tf, reconcile):
            problems.append("the scheduler's OIDC account has no run.invoker on the `reconcile` function")
    pushes = (("ingest", "google_pubsub_topic.requests"), ("webhooks", "google_pubsub_topic.events"),
              ("webhooks", "google_pubsub_topic.webhook_retries"))
    for target, topic in pushes:
        function = entry.get(target)
        fed = [
            b for b in tf.resources.get("google_pubsub_subscription", {}).values()
            if f"google_cloudfunctions2_function.{function}" in refs(block(b, "push_config").get("push_endpoint", ""))
            and topic in subscription_topics(tf, b)
        ]
        if not function or not fed:
            problems.append(f"no push subscription on {topic} feeds the `{target}` function")
        for sub in fed:
            account = {r for r in refs(block(block(sub, "push_config"), "oidc_token")) if r.startswith("google_service_account.")}
            if not account or not account <= invokers(tf, function):
                problems.append(f"the push subscription to `{target}` uses an account without run.invoker on it")
    return problems


def check_image(root: Path) -> list[str]:
    problems = []
    dockerfile = (root / "infra" / "runner.Dockerfile").read_text()
    rules = [line.strip() for line in (root / "infra" / "runner.Dockerfile.dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    sources = []
    for line in dockerfile.splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            sources += [w for w in words[1:-1] if not w.startswith("--")]
    for source in sources:
        included = True
        for rule in rules:
            negate = rule.startswith("!")
            pattern = rule.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(source.rstrip("/"), pattern):
                included = negate
        if not included:
            problems.append(f"runner.Dockerfile COPYs {source}, which runner.Dockerfile.dockerignore leaves out")
    copied = {s.rstrip("/") for s in sources}
    first_party = {p.name for p in root.iterdir() if (p / "__init__.py").is_file()} | {"soul_common"}
    imported = set()
    for path in (root / "gpu_runner").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module.split(".")[0])
    for package in sorted((imported & first_party) | {"soul_common"}):
        if package not in copied:
            problems.append(f"the runner imports {package} (or must carry it), but runner.Dockerfile does not COPY it")
    # `pip install /tmp/soul` installs only what [tool.setuptools.packages.find] includes: a package that is
    # COPYed but not included would vanish with /tmp/soul. (A package not yet in the tree is left to the build.)
    project = tomllib.loads((root / "pyproject.toml").read_text()) if (root / "pyproject.toml").is_file() else {}
    include = project.get("tool", {}).get("setuptools", {}).get("packages", {}).get("find", {}).get("include", [])
    for package in sorted(copied & first_party):
        if (root / package).is_dir() and not any(fnmatch.fnmatch(package, pattern) for pattern in include):
            problems.append(f"runner.Dockerfile COPYs {package}, but pyproject.toml's packages.find does not include it")
    if not re.search(r"FROM\s+--platform=linux/amd64\s", dockerfile):
        problems.append("runner.Dockerfile's base stage is not --platform=linux/amd64")
    if not re.search(r"ARG CUDA_BASE=nvidia/cuda:[\w.]+-base-", dockerfile):
        problems.append("runner.Dockerfile's CUDA_BASE is not a CUDA -base- image")
    return problems


def check_skips(root: Path) -> list[str]:
    problems = []
    for path in sorted([*(root / "infra").rglob("*.tf"), root / "infra" / "runner.Dockerfile"]):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            match = SKIP.search(line)
            if not match:
                continue
            where = f"{path.relative_to(root).as_posix()}:{number}"
            if match.group(1) in MUST_PASS:
                problems.append(f"{where} skips {match.group(1)}, a check that must pass")
            if not (match.group(2) or "").strip():
                problems.append(f"{where} skips {match.group(1)} without a reason")
    return problems


def archive_targets_and_packages(root: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    script = (root / "infra" / "build_functions_source.sh").read_text()
    found = {}
    for name in ("TARGETS", "PACKAGES"):
        match = re.search(rf"^{name} = (\(.*?\))", script, re.MULTILINE)
        found[name] = ast.literal_eval(match.group(1)) if match else ()
    return found["TARGETS"], found["PACKAGES"]


def contract_names(root: Path) -> dict[str, str]:
    tree = ast.parse((root / "schemas" / "names.py").read_text())
    return {
        node.targets[0].id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and isinstance(node.value, ast.Constant)
    }


def main(root: Path) -> int:
    tf = Terraform(root / "infra" / "terraform")
    targets, packages = archive_targets_and_packages(root)
    problems = (
        check_references(tf)
        + check_runner_group(tf)
        + check_autoscaler(tf, contract_names(root))
        + check_functions(tf, targets)
        + check_image(root)
        + check_skips(root)
        + ([] if "soul_common" in packages else ["build_functions_source.sh does not ship soul_common"])
    )
    for problem in problems:
        print(f"wiring: {problem}")
    resources = sum(len(v) for v in tf.resources.values())
    print(f"wiring: {'FAILED' if problems else 'ok'} ({resources} resources, {len(problems)} problems)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1])))
