# Egress of the runner VMs without public IPs. By default this module creates a VPC and a subnet with Private
# Google Access (Firestore, Pub/Sub, GCS, Artifact Registry, Cloud Logging are reached on Google's network), so a
# first deploy works with no external IP and no NAT. A deployer who has a network names it (runner_network +
# runner_subnetwork) and is then responsible for its egress. Cloud NAT (runner_cloud_nat) adds internet egress
# for anything that is not a Google API (a pip mirror, a third-party registry): off by default, nothing needs it.

locals {
  create_network = var.runner_network == ""
  runner_network = local.create_network ? google_compute_network.runner[0].self_link : var.runner_network
  runner_subnetwork = (
    local.create_network ? google_compute_subnetwork.runner[0].self_link : var.runner_subnetwork
  )
}

resource "google_compute_network" "runner" {
  count = local.create_network ? 1 : 0

  name                    = "soul-runner"
  auto_create_subnetworks = false
  routing_mode            = "REGIONAL"
  depends_on              = [google_project_service.enabled]
}

resource "google_compute_subnetwork" "runner" {
  count = local.create_network ? 1 : 0

  name                     = "soul-runner-${var.region}"
  network                  = google_compute_network.runner[0].id
  region                   = var.region
  ip_cidr_range            = var.runner_subnet_cidr
  private_ip_google_access = true # Google APIs without an external IP

  log_config {
    aggregation_interval = "INTERVAL_10_MIN"
    flow_sampling        = 0.1
    metadata             = "INCLUDE_ALL_METADATA"
  }
}

resource "google_compute_router" "runner" {
  count = var.runner_cloud_nat ? 1 : 0

  name    = "soul-runner"
  region  = var.region
  network = local.runner_network
}

resource "google_compute_router_nat" "runner" {
  count = var.runner_cloud_nat ? 1 : 0

  name                               = "soul-runner"
  router                             = google_compute_router.runner[0].name
  region                             = var.region
  nat_ip_allocate_option             = "AUTO_ONLY"
  source_subnetwork_ip_ranges_to_nat = "ALL_SUBNETWORKS_ALL_IP_RANGES"

  log_config {
    enable = true
    filter = "ERRORS_ONLY"
  }
}

# Google's health-check probers reach the runners' health port (autohealing). Nothing else is let in: no SSH
# from anywhere (use IAP/OS Login through a rule of your own if you must).
resource "google_compute_firewall" "runner_health_probers" {
  name        = "soul-runner-allow-health-probers"
  network     = local.runner_network
  direction   = "INGRESS"
  priority    = 1000
  description = "Google Cloud health-check probers -> the runner's health responder (gpu_runner/health.py)"

  source_ranges = ["35.191.0.0/16", "130.211.0.0/22"]
  target_tags   = ["soul-runner"]

  allow {
    protocol = "tcp"
    ports    = [tostring(var.runner_health_port)]
  }

  log_config {
    metadata = "EXCLUDE_ALL_METADATA"
  }
}
