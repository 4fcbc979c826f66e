# Customer-managed encryption (CMEK) of the data Soul keeps: Pub/Sub topics, the buckets, the Artifact Registry
# repository and the runners' boot disks. Google encrypts all of it at rest anyway; a key of our own adds
# rotation, access audit and the ability to revoke. kms_key_id names an existing key; empty creates one.
# Key rings cannot be deleted: `terraform destroy` leaves soul-keys in place (the key's versions are destroyed).

locals {
  create_kms_key = var.kms_key_id == ""
  kms_key_id     = local.create_kms_key ? google_kms_crypto_key.soul[0].id : var.kms_key_id

  # The Google service agents that encrypt and decrypt for each service.
  kms_users = {
    pubsub           = local.pubsub_service_agent
    storage          = "serviceAccount:${data.google_storage_project_service_account.this.email_address}"
    artifactregistry = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-artifactregistry.iam.gserviceaccount.com"
    compute          = "serviceAccount:service-${data.google_project.this.number}@compute-system.iam.gserviceaccount.com"
  }
}

data "google_storage_project_service_account" "this" {
  depends_on = [google_project_service.enabled]
}

resource "google_kms_key_ring" "soul" {
  count = local.create_kms_key ? 1 : 0

  name       = "soul-keys"
  location   = var.region
  depends_on = [google_project_service.enabled]
}

resource "google_kms_crypto_key" "soul" {
  count = local.create_kms_key ? 1 : 0

  name            = "soul-data"
  key_ring        = google_kms_key_ring.soul[0].id
  purpose         = "ENCRYPT_DECRYPT"
  rotation_period = "7776000s" # 90 days
  labels          = var.labels

  lifecycle {
    prevent_destroy = true # destroying the key makes every object, message and disk under it unreadable
  }
}

resource "google_kms_crypto_key_iam_member" "service_agents" {
  for_each = local.kms_users

  crypto_key_id = local.kms_key_id
  role          = "roles/cloudkms.cryptoKeyEncrypterDecrypter"
  member        = each.value
}
