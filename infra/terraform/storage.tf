# The media bucket: private, uniform access, public access prevention enforced, no versioning (objects are
# written create-only, `if_generation_match=0`). Consumers read through V4 signed URLs only.
resource "google_storage_bucket" "media" {
  name                        = local.bucket_name
  location                    = local.bucket_location
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = var.bucket_force_destroy
  labels                      = var.labels

  versioning {
    enabled = false
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

  depends_on = [google_project_service.enabled]
}

# Source archives of the functions (built by infra/build_functions_source.sh). Old archives expire.
resource "google_storage_bucket" "functions_source" {
  name                        = "${var.project_id}-soul-functions-source"
  location                    = upper(var.region)
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = true
  labels                      = var.labels

  lifecycle_rule {
    condition {
      age = 30
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.enabled]
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

  depends_on = [google_project_service.enabled]
}
