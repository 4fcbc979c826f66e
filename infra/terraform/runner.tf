# The GPU runners: a zonal managed instance group of N Container-Optimized OS VMs. On each VM, cloud-init
# (templates/runner-cloud-init.yaml.tftpl) installs the NVIDIA driver, puts the weights under /models, and starts
# one runner container per GPU as a systemd unit (restarted if it exits). The group recreates VMs that die.

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

  network_interface {
    network    = var.runner_network
    subnetwork = var.runner_subnetwork

    dynamic "access_config" {
      for_each = var.runner_public_ip ? [1] : []
      content {}
    }
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
  }

  depends_on = [google_project_service.enabled]
}

resource "google_compute_instance_group_manager" "runner" {
  name               = "soul-runner"
  zone               = var.zone
  base_instance_name = "soul-runner"
  target_size        = var.runner_count

  version {
    instance_template = google_compute_instance_template.runner.self_link_unique
  }

  # A new template replaces VMs one at a time, without surge (GPU quota is usually exact). A replaced VM gets
  # SIGTERM through systemd and finishes its running job within the grace period.
  update_policy {
    type                  = "PROACTIVE"
    minimal_action        = "REPLACE"
    replacement_method    = "RECREATE"
    max_surge_fixed       = 0
    max_unavailable_fixed = 1
  }

  depends_on = [
    google_project_iam_member.runner_project,
    google_pubsub_subscription_iam_member.runner_subscribes,
    google_artifact_registry_repository_iam_member.runner_pulls,
  ]
}
