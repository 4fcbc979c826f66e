# The GPU runners: a regional managed instance group of Container-Optimized OS VMs across the zones that offer
# the GPU (var.runner_zones), scaled 0..N by an autoscaler on the job backlog. On each VM, cloud-init
# (templates/runner-cloud-init.yaml.tftpl) installs the NVIDIA driver, puts the weights under /models, and starts
# one runner container per GPU as a systemd unit (restarted if it exits). A health check on the runner's
# health responder (gpu_runner/health.py) recreates VMs whose runner never comes up or stops ticking.

locals {
  models_host_dir = var.models_disk_name != "" ? "/mnt/disks/models" : "/mnt/stateful_partition/soul/models"

  # One settings object per runner, from the environment (gpu_runner/settings.py). runner_env overrides these.
  runner_env = merge(
    {
      GCS_PROJECT_ID              = var.project_id
      GOOGLE_CLOUD_PROJECT        = var.project_id
      GCS_BUCKET_NAME             = google_storage_bucket.media.name
      LOG_LEVEL                   = var.log_level
      SDXL_MODEL                  = var.sdxl_model_path
      SVD_MODEL                   = var.svd_model_path
      HF_HUB_OFFLINE              = "1" # weights never download at run time
      TRANSFORMERS_OFFLINE        = "1"
      MAX_CONCURRENT_TASKS        = "1" # one job at a time per GPU; one container per GPU
      SOUL_SHUTDOWN_GRACE_SECONDS = tostring(var.runner_shutdown_grace_seconds)
      SOUL_HEALTH_PORT            = tostring(var.runner_health_port) # gpu_runner/health.py
      # Speed (gpu_runner/pipelines/acceleration.py): compile artifacts kept on the VM's stateful disk (mounted by
      # cloud-init, survives container restarts) and under compile-cache/ in the bucket, so a new VM starts warm.
      SOUL_COMPILE            = var.runner_compile
      SOUL_QUANTIZE           = var.runner_quantize
      SOUL_COMPILE_FALLBACK   = var.runner_compile_fallback
      SOUL_COMPILE_SHAPES     = var.runner_compile_shapes
      SOUL_COMPILE_CACHE_DIR  = "/var/cache/soul/compile"
      TORCHINDUCTOR_CACHE_DIR = "/var/cache/soul/compile/inductor"
    },
    var.runner_env,
  )

  # docker stop waits this long after SIGTERM before SIGKILL; systemd waits a little longer for docker.
  runner_stop_timeout = var.runner_shutdown_grace_seconds + 15

  runner_cloud_init = templatefile("${path.module}/templates/runner-cloud-init.yaml.tftpl", {
    image             = var.runner_image
    registry_host     = split("/", var.runner_image)[0]
    runner_env        = join("\n", [for k in sort(keys(local.runner_env)) : "${k}=${local.runner_env[k]}"])
    gpu_count         = var.runner_gpus_per_vm
    driver_version    = var.runner_gpu_driver_version
    models_gcs_uri    = var.models_gcs_uri
    models_disk       = var.models_disk_name != ""
    models_host_dir   = local.models_host_dir
    stop_timeout      = local.runner_stop_timeout
    systemd_stop_wait = local.runner_stop_timeout + 15
    health_port       = var.runner_health_port
  })
}

resource "google_compute_instance_template" "runner" {
  name_prefix  = "soul-runner-"
  machine_type = var.runner_machine_type
  region       = var.region
  labels       = var.labels
  tags         = ["soul-runner"]

  disk {
    boot         = true
    source_image = var.runner_boot_image
    disk_type    = "pd-balanced"
    disk_size_gb = var.runner_boot_disk_gb
    auto_delete  = true

    disk_encryption_key {
      kms_key_self_link = local.kms_key_id
    }
  }

  # The weights disk, shared READ_ONLY by every runner VM of the zone.
  dynamic "disk" {
    for_each = var.models_disk_name != "" ? [var.models_disk_name] : []
    content {
      source      = disk.value
      device_name = "soul-models" # /dev/disk/by-id/google-soul-models
      mode        = "READ_ONLY"
      boot        = false
      auto_delete = false
    }
  }

  dynamic "guest_accelerator" {
    for_each = var.runner_accelerator_type != "" ? [var.runner_accelerator_type] : []
    content {
      type  = guest_accelerator.value
      count = var.runner_gpus_per_vm
    }
  }

  # No external IP: the subnet has Private Google Access (network.tf), or Cloud NAT with runner_cloud_nat.
  network_interface {
    network    = local.runner_network
    subnetwork = local.runner_subnetwork
  }

  # GPU VMs cannot live-migrate: they stop for host maintenance (the lease/reconciler path retries the job).
  scheduling {
    on_host_maintenance         = "TERMINATE"
    automatic_restart           = !var.runner_spot
    preemptible                 = var.runner_spot
    provisioning_model          = var.runner_spot ? "SPOT" : "STANDARD"
    instance_termination_action = var.runner_spot ? "STOP" : null
  }

  service_account {
    email  = google_service_account.runner.email
    scopes = ["cloud-platform"] # access is decided by the account's IAM roles
  }

  metadata = {
    user-data                 = local.runner_cloud_init
    google-logging-enabled    = "true" # ship journald and container logs to Cloud Logging
    google-monitoring-enabled = "true"
    enable-oslogin            = "TRUE"
    block-project-ssh-keys    = "TRUE" # project-wide SSH keys never open a runner VM
  }

  shielded_instance_config {
    enable_vtpm                 = true
    enable_integrity_monitoring = true
  }

  lifecycle {
    create_before_destroy = true

    precondition {
      condition     = (var.models_gcs_uri != "") != (var.models_disk_name != "")
      error_message = "Set exactly one of models_gcs_uri and models_disk_name: the runner never downloads weights from a hub."
    }
    precondition {
      condition     = var.models_disk_name == "" || length(var.runner_zones) == 1
      error_message = "models_disk_name is a zonal disk: it can only be attached in one zone, so runner_zones must name exactly that zone (or use models_gcs_uri)."
    }
  }

  depends_on = [google_project_service.enabled, google_kms_crypto_key_iam_member.service_agents]
}

# The runner answers on its health port (gpu_runner/health.py): /healthz is 200 while its intake loop ticks (or a
# job runs, or it is still within its start-up grace). A VM whose driver, weights or runner never comes up answers
# nothing and is recreated once the initial delay has passed.
resource "google_compute_health_check" "runner" {
  name                = "soul-runner-alive"
  description         = "Soul runner liveness: GET /healthz on the runner of GPU 0"
  check_interval_sec  = 30
  timeout_sec         = 10
  healthy_threshold   = 1
  unhealthy_threshold = 4 # two minutes of silence

  http_health_check {
    port         = var.runner_health_port
    request_path = "/healthz"
  }

  log_config {
    enable = true
  }

  depends_on = [google_project_service.enabled]
}

resource "google_compute_region_instance_group_manager" "runner" {
  name                      = "soul-runner"
  region                    = var.region
  base_instance_name        = "soul-runner"
  distribution_policy_zones = var.runner_zones
  # ANY: new VMs go wherever the GPU is obtainable now, so one zone's stockout does not stall a scale-up.
  distribution_policy_target_shape = "ANY"

  # No target_size: the autoscaler below owns the size (0 when there is no backlog).

  version {
    instance_template = google_compute_instance_template.runner.self_link_unique
  }

  auto_healing_policies {
    health_check = google_compute_health_check.runner.id
    # Driver install + weights copy + model load on a fresh VM; until then the health check is not acted on.
    initial_delay_sec = var.runner_autohealing_initial_delay_seconds
  }

  # A new template replaces VMs without surge (GPU quota is usually exact). A replaced VM gets SIGTERM through
  # systemd and finishes its running job within the grace period. A regional MIG wants 0 or >= the number of
  # zones for max_unavailable_fixed; instance redistribution must be off with the ANY target shape.
  update_policy {
    type                         = "PROACTIVE"
    minimal_action               = "REPLACE"
    replacement_method           = "RECREATE"
    instance_redistribution_type = "NONE"
    max_surge_fixed              = 0
    max_unavailable_fixed        = length(var.runner_zones)
  }

  # Every grant a fresh VM needs before its first job: pull the image, read the weights, pull both lanes,
  # write jobs/variants/logs/metrics, publish events and dead letters, write media.
  depends_on = [
    google_project_iam_member.runner_project,
    google_pubsub_subscription_iam_member.runner_subscribes,
    google_pubsub_topic_iam_member.runner_publishes,
    google_storage_bucket_iam_member.runner_media,
    google_storage_bucket_iam_member.runner_reads_models,
    google_artifact_registry_repository_iam_member.runner_pulls,
    google_compute_firewall.runner_health_probers,
  ]
}

# Scale 0..N on the backlog of BOTH lanes (GCP's pattern for queue workers): one metric per subscription, each
# asking for one GPU per undelivered message (single_instance_assignment = jobs a VM runs at once). The autoscaler
# follows the larger of the two recommendations (autoscaler filters allow only `=` and AND, so the two lanes cannot
# be summed in one metric); with both lanes full it therefore scales to the bigger lane, and max_replicas caps it.
# With min_replicas = 0 the group goes to zero VMs once both backlogs are empty (after the stabilization period).
resource "google_compute_region_autoscaler" "runner" {
  name   = "soul-runner"
  region = var.region
  target = google_compute_region_instance_group_manager.runner.id

  autoscaling_policy {
    min_replicas    = var.runner_min_replicas
    max_replicas    = var.runner_max_replicas
    cooldown_period = var.runner_autohealing_initial_delay_seconds # a new VM's metrics are ignored while it boots
    mode            = "ON"

    dynamic "metric" {
      for_each = local.runner_subscriptions
      content {
        name                       = "pubsub.googleapis.com/subscription/num_undelivered_messages"
        filter                     = "resource.type = \"pubsub_subscription\" AND resource.label.subscription_id = \"${metric.value}\""
        single_instance_assignment = var.runner_gpus_per_vm
      }
    }

    # Scale in slowly: at most one VM per window, so a drained VM finishing its last job (SIGTERM drain) is not
    # removed together with its neighbours the moment the queue reads empty.
    scale_in_control {
      max_scaled_in_replicas {
        fixed = 1
      }
      time_window_sec = var.runner_scale_in_window_seconds
    }
  }
}
