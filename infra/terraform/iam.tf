# Service accounts, each with the least it needs. Project-level roles only where no narrower resource exists
# (Firestore has no per-collection IAM; logging/monitoring are project sinks).

# --- soul-api: identity of the `api` and `ingest` functions -------------------------------------------------
resource "google_service_account" "api" {
  account_id   = "soul-api"
  display_name = "Soul functions (api, ingest)"
  depends_on   = [google_project_service.enabled]
}

resource "google_project_iam_member" "api_firestore" {
  project = var.project_id
  role    = "roles/datastore.user"
  member  = google_service_account.api.member
}

resource "google_pubsub_topic_iam_member" "api_publishes" {
  for_each = {
    jobs            = google_pubsub_topic.jobs.name
    jobs_background = google_pubsub_topic.jobs_background.name
    events          = google_pubsub_topic.events.name
  }

  topic  = each.value
  role   = "roles/pubsub.publisher"
  member = google_service_account.api.member
}

# /ready reads the metadata of the topics it publishes to (functions/adapters/pubsub.py ping: pubsub.topics.get), granted
# on exactly those topics: publishing rights alone cannot tell a missing topic from a working one.
resource "google_pubsub_topic_iam_member" "api_sees_topics" {
  for_each = google_pubsub_topic_iam_member.api_publishes

  topic  = each.value.topic
  role   = "roles/pubsub.viewer"
  member = google_service_account.api.member
}

resource "google_storage_bucket_iam_member" "api_reads_media" {
  bucket = google_storage_bucket.media.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.api.member
}

# Admin uploads of a soul's identity (functions/services/identity.py): create-only (objectCreator cannot
# overwrite or delete), and only under the two prefixes those objects live in (IAM condition on the object name).
resource "google_storage_bucket_iam_member" "api_creates_identity_assets" {
  bucket = google_storage_bucket.media.name
  role   = "roles/storage.objectCreator"
  member = google_service_account.api.member

  condition {
    title       = "identity-assets-only"
    description = "reference images and LoRA adapters of souls"
    expression  = "resource.name.startsWith(\"projects/_/buckets/${google_storage_bucket.media.name}/objects/references/\") || resource.name.startsWith(\"projects/_/buckets/${google_storage_bucket.media.name}/objects/loras/\")"
  }
}

# V4 signed URLs without a key file: the functions call IAM signBlob as themselves
# (SOUL_SIGNING_SERVICE_ACCOUNT), which needs iam.serviceAccounts.signBlob on their own account.
resource "google_service_account_iam_member" "api_signs_as_itself" {
  service_account_id = google_service_account.api.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = google_service_account.api.member
}

resource "google_secret_manager_secret_iam_member" "api_reads_keys" {
  project   = var.project_id
  secret_id = var.api_keys_secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.api.member
}

# --- soul-runner: identity of the GPU runner VMs --------------------------------------------------------------
resource "google_service_account" "runner" {
  account_id   = "soul-runner"
  display_name = "Soul GPU runner"
  depends_on   = [google_project_service.enabled]
}

resource "google_project_iam_member" "runner_project" {
  for_each = toset([
    "roles/datastore.user",    # job documents, variants, runner_stats
    "roles/logging.logWriter", # container logs (COS logging agent)
    "roles/monitoring.metricWriter",
  ])

  project = var.project_id
  role    = each.value
  member  = google_service_account.runner.member
}

resource "google_pubsub_subscription_iam_member" "runner_subscribes" {
  for_each = google_pubsub_subscription.runner # both lanes

  subscription = each.value.name
  role         = "roles/pubsub.subscriber"
  member       = google_service_account.runner.member
}

resource "google_pubsub_topic_iam_member" "runner_publishes" {
  for_each = {
    events      = google_pubsub_topic.events.name           # completion events
    jobs        = google_pubsub_topic.jobs.name             # the reconciler re-publishes lost jobs
    background  = google_pubsub_topic.jobs_background.name  # ... in their own lane
    dead_letter = google_pubsub_topic.jobs_dead_letter.name # unusable messages, with the reason
  }

  topic  = each.value
  role   = "roles/pubsub.publisher"
  member = google_service_account.runner.member
}

# Create-only writes (objectCreator cannot overwrite or delete) plus reads (existing objects, video sources).
resource "google_storage_bucket_iam_member" "runner_media" {
  for_each = toset(["roles/storage.objectCreator", "roles/storage.objectViewer"])

  bucket = google_storage_bucket.media.name
  role   = each.value
  member = google_service_account.runner.member
}

resource "google_artifact_registry_repository_iam_member" "runner_pulls" {
  location   = google_artifact_registry_repository.soul.location
  repository = google_artifact_registry_repository.soul.name
  role       = "roles/artifactregistry.reader"
  member     = google_service_account.runner.member
}

locals {
  models_bucket = var.models_gcs_uri == "" ? "" : regex("^gs://([^/]+)", var.models_gcs_uri)[0]
}

# Weights copied at boot from a bucket other than the media bucket (in the media bucket, the objectViewer
# grant above already covers them).
resource "google_storage_bucket_iam_member" "runner_reads_models" {
  count = local.models_bucket != "" && local.models_bucket != local.bucket_name ? 1 : 0

  bucket = local.models_bucket
  role   = "roles/storage.objectViewer"
  member = google_service_account.runner.member
}

# --- soul-push: the identity Pub/Sub uses to push soul-requests to `ingest` ----------------------------------
resource "google_service_account" "push" {
  account_id   = "soul-push"
  display_name = "Soul soul-requests push subscription"
  depends_on   = [google_project_service.enabled]
}

# Lets the Pub/Sub service agent mint OIDC tokens for the push account. Granted automatically to the agent in
# projects created after April 2021; harmless (and needed) in older ones.
resource "google_service_account_iam_member" "agent_mints_push_tokens" {
  service_account_id = google_service_account.push.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_service_agent
}

# --- soul-build: builds the functions' containers (Cloud Build) ----------------------------------------------
# New projects no longer give the default compute account the build permissions; a dedicated account avoids
# depending on either.
resource "google_service_account" "build" {
  account_id   = "soul-build"
  display_name = "Soul functions build"
  depends_on   = [google_project_service.enabled]
}

# The minimum a custom build account of Cloud Functions gen2 needs: write build logs, push the function images
# (gcf-artifacts repository), read the source archive (bucket grant below). No cloudbuild.builds.builder: it
# carries far more (including acting as other service accounts).
resource "google_project_iam_member" "build" {
  for_each = toset([
    "roles/logging.logWriter",
    "roles/artifactregistry.writer",
  ])

  project = var.project_id
  role    = each.value
  member  = google_service_account.build.member
}

resource "google_storage_bucket_iam_member" "build_reads_source" {
  bucket = google_storage_bucket.functions_source.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.build.member
}

# --- soul-webhooks: identity of the `webhooks` function --------------------------------------------------------
resource "google_service_account" "webhooks" {
  account_id   = "soul-webhooks"
  display_name = "Soul webhooks function"
  depends_on   = [google_project_service.enabled]
}

# Reads the job and tenant documents, records each delivery attempt on the job document.
resource "google_project_iam_member" "webhooks_firestore" {
  project = var.project_id
  role    = "roles/datastore.user"
  member  = google_service_account.webhooks.member
}

# Publishes a target's next attempt on soul-webhook-retries (and nothing else).
resource "google_pubsub_topic_iam_member" "webhooks_publishes_retries" {
  topic  = google_pubsub_topic.webhook_retries.name
  role   = "roles/pubsub.publisher"
  member = google_service_account.webhooks.member
}

resource "google_secret_manager_secret_iam_member" "webhooks_reads_secret" {
  count = var.webhook_secret_id != "" ? 1 : 0

  project   = var.project_id
  secret_id = var.webhook_secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.webhooks.member
}

# --- soul-reconciler: identity of the `reconcile` function ------------------------------------------------------
resource "google_service_account" "reconciler" {
  account_id   = "soul-reconciler"
  display_name = "Soul reconciler function"
  depends_on   = [google_project_service.enabled]
}

resource "google_project_iam_member" "reconciler_firestore" {
  project = var.project_id
  role    = "roles/datastore.user"
  member  = google_service_account.reconciler.member
}

# Re-publishes lost jobs in their lane; publishes the failure event of a job it gives up on.
resource "google_pubsub_topic_iam_member" "reconciler_publishes" {
  for_each = {
    jobs       = google_pubsub_topic.jobs.name
    background = google_pubsub_topic.jobs_background.name
    events     = google_pubsub_topic.events.name
  }

  topic  = each.value
  role   = "roles/pubsub.publisher"
  member = google_service_account.reconciler.member
}

# --- soul-scheduler: the identity Cloud Scheduler calls `reconcile` with (run.invoker on it only) --------------
resource "google_service_account" "scheduler" {
  account_id   = "soul-scheduler"
  display_name = "Soul Cloud Scheduler (reconcile)"
  depends_on   = [google_project_service.enabled]
}
