locals {
  services = toset([
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com",           # builds the functions' containers
    "cloudfunctions.googleapis.com",       # Cloud Functions gen2 (Cloud Run functions)
    "cloudkms.googleapis.com",             # the CMEK key (kms.tf)
    "cloudresourcemanager.googleapis.com", # project IAM (enable it first by hand: README)
    "cloudscheduler.googleapis.com",       # the reconcile schedule
    "compute.googleapis.com",              # runner VMs
    "firestore.googleapis.com",
    "iam.googleapis.com",
    "iamcredentials.googleapis.com", # signBlob: V4 signed URLs without a key file
    "logging.googleapis.com",
    "monitoring.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
    "serviceusage.googleapis.com", # enabling the others (enable it first by hand: README)
    "storage.googleapis.com",
  ])
}

resource "google_project_service" "enabled" {
  for_each = local.services

  project            = var.project_id
  service            = each.value
  disable_on_destroy = false
}
