# The media bucket: private, uniform access, public access prevention enforced, encrypted with the Soul key
# (kms.tf), access-logged. Objects are written create-only (`if_generation_match=0`), so versioning only keeps
# deleted objects for a while. Consumers read through V4 signed URLs only.
resource "google_storage_bucket" "media" {
  name                        = local.bucket_name
  location                    = local.bucket_location
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = var.bucket_force_destroy
  labels                      = var.labels

  # Objects are written create-only, so versions only ever come from a delete: kept for 30 days, then gone.
  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = 30
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  encryption {
    default_kms_key_name = local.kms_key_id
  }

  logging {
    log_bucket = google_storage_bucket.access_logs.name
  }

  # The web page saves results as blobs: it fetches the signed URL (its CSP's connect-src names this origin), so
  # the bucket answers CORS for GET. A signed URL is the credential; CORS only lets a page read what it already holds.
  cors {
    origin          = var.media_cors_origins
    method          = ["GET", "HEAD"]
    response_header = ["Content-Type", "Content-Length", "Content-Disposition"]
    max_age_seconds = 3600
  }

  # Compile artifacts of the runners (gpu_runner/pipelines/compile_cache.py): keyed by torch, card and model, so
  # old ones are dead weight after an upgrade; a VM that misses one compiles and saves it again.
  lifecycle_rule {
    condition {
      age            = var.compile_cache_delete_after_days
      matches_prefix = ["compile-cache/"]
    }
    action {
      type = "Delete"
    }
  }

  dynamic "lifecycle_rule" {
    for_each = var.media_delete_after_days > 0 ? [var.media_delete_after_days] : []
    content {
      condition {
        age = lifecycle_rule.value
      }
      action {
        type = "Delete"
      }
    }
  }

  # Previews while denoising (previews/{job}/{step}.webp, gpu_runner/stages/previews.py) matter only while a job
  # runs: gone after a day.
  lifecycle_rule {
    condition {
      age            = 1
      matches_prefix = ["previews/"]
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.enabled, google_kms_crypto_key_iam_member.service_agents]
}

# Source archives of the functions (built by infra/build_functions_source.sh). Old archives expire.
resource "google_storage_bucket" "functions_source" {
  name                        = "${var.project_id}-soul-functions-source"
  location                    = upper(var.region)
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = true
  labels                      = var.labels

  versioning {
    enabled = true # archives are named by content and never overwritten; noncurrent ones expire below
  }

  lifecycle_rule {
    condition {
      age = 30
    }
    action {
      type = "Delete"
    }
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = 7
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  encryption {
    default_kms_key_name = local.kms_key_id
  }

  logging {
    log_bucket = google_storage_bucket.access_logs.name
  }

  depends_on = [google_project_service.enabled, google_kms_crypto_key_iam_member.service_agents]
}

# Usage and storage logs of the two buckets above (who fetched which object), kept for var.access_log_days.
resource "google_storage_bucket" "access_logs" {
  #checkov:skip=CKV_GCP_62:this is the access-log bucket; logging its own log writes would loop
  name                        = "${var.project_id}-soul-access-logs"
  location                    = local.bucket_location
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = var.bucket_force_destroy
  labels                      = var.labels

  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      age = var.access_log_days
    }
    action {
      type = "Delete"
    }
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = 1
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  encryption {
    default_kms_key_name = local.kms_key_id
  }

  depends_on = [google_project_service.enabled, google_kms_crypto_key_iam_member.service_agents]
}

# GCS writes usage logs as this group.
resource "google_storage_bucket_iam_member" "access_logs_writer" {
  bucket = google_storage_bucket.access_logs.name
  role   = "roles/storage.objectCreator"
  member = "group:cloud-storage-analytics@google.com"
}

locals {
  functions_source_zip = var.functions_source_zip != "" ? var.functions_source_zip : "${path.module}/../build/soul-functions.zip"
}

# Named by content: a rebuilt, changed archive is a new object and redeploys both functions; an unchanged one
# (the build is deterministic) changes nothing.
resource "google_storage_bucket_object" "functions_source" {
  bucket = google_storage_bucket.functions_source.name
  name   = "soul-functions-${filesha256(local.functions_source_zip)}.zip"
  source = local.functions_source_zip
}

# The runner's image.
resource "google_artifact_registry_repository" "soul" {
  location      = var.region
  repository_id = "soul"
  format        = "DOCKER"
  description   = "Soul runner images (infra/runner.Dockerfile)"
  labels        = var.labels
  kms_key_name  = local.kms_key_id

  depends_on = [google_project_service.enabled, google_kms_crypto_key_iam_member.service_agents]
}
