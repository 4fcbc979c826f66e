# The functions: Cloud Functions gen2 (Cloud Run functions), Python 3.11, one source archive
# (infra/build_functions_source.sh), targets of main.py:
#   api        HTTP API, target api_async (ASGI)          (identity soul-api)
#   ingest     soul-requests push subscription             (identity soul-api)
#   webhooks   soul-events-webhooks push subscription      (identity soul-webhooks): signed webhook deliveries
#   reconcile  Cloud Scheduler, every minute, OIDC         (identity soul-reconciler): re-publishes lost jobs, so
#              that reconciliation runs even when the runner fleet is scaled to zero
# Neither is ever reachable anonymously: invoker IAM at the platform, and SOUL_REQUIRE_AUTH=true in the code
# (the settings refuse to start without API keys or SOUL_AUTH_MODE=platform).

locals {
  functions_env = merge(
    {
      GCS_PROJECT_ID               = var.project_id
      GCS_BUCKET_NAME              = google_storage_bucket.media.name
      SOUL_SIGNING_SERVICE_ACCOUNT = google_service_account.api.email
      SOUL_SIGNED_URL_TTL_S        = tostring(var.signed_url_ttl_seconds)
      SOUL_MODEL_TAG               = var.model_tag
      SOUL_REQUIRE_AUTH            = "true"
      LOG_LEVEL                    = var.log_level
      THREADS                      = tostring(var.api_concurrency) # threads of the router (api_async: its pool)
      # Event streams: a cap per instance that fits next to api_concurrency in the instance's request
      # concurrency (so streams never take the router's slots), ended before the function's 60 s timeout.
      SOUL_SSE_MAX_STREAMS_PER_INSTANCE = tostring(var.api_streams_per_instance)
      SOUL_SSE_MAX_DURATION_S           = "55"
      # Set by the platform on every gen2 deploy anyway; stated here so that plans show no permanent diff.
      LOG_EXECUTION_ID = "true"
    },
    { for k, v in { SOUL_PUBLIC_BASE_URL = var.api_public_base_url } : k => v if v != "" }, # empty: relative URLs
  )

  functions_source = {
    bucket = google_storage_bucket.functions_source.name
    object = google_storage_bucket_object.functions_source.name
  }
}

resource "google_cloudfunctions2_function" "api" {
  name        = "soul-api"
  location    = var.region
  description = "Soul HTTP API (dedup, jobs, tasks, signed URLs)"
  labels      = var.labels

  build_config {
    runtime         = "python311"
    entry_point     = "api_async" # ASGI: event streams hold no request thread (functions/http/asgi.py)
    service_account = google_service_account.build.id

    source {
      storage_source {
        bucket = local.functions_source.bucket
        object = local.functions_source.object
      }
    }
  }

  service_config {
    #checkov:skip=CKV_GCP_124:the api is the product's public HTTP surface (callers are outside the project); invoker IAM (no allUsers by default) and API keys decide who gets in
    service_account_email            = google_service_account.api.email
    ingress_settings                 = "ALLOW_ALL" # reachable from the internet, but only by authorized callers
    all_traffic_on_latest_revision   = true
    available_memory                 = var.api_memory
    available_cpu                    = "1" # needed for max_instance_request_concurrency > 1
    max_instance_request_concurrency = var.api_concurrency + var.api_streams_per_instance
    min_instance_count               = var.api_min_instances
    max_instance_count               = var.api_max_instances
    timeout_seconds                  = 60
    environment_variables            = local.functions_env

    # API keys from Secret Manager; with keys set, the code requires one on every request but /healthz, /ready,
    # /docs and /openapi.json.
    secret_environment_variables {
      key        = "SOUL_API_KEYS"
      project_id = var.project_id
      secret     = var.api_keys_secret_id
      version    = var.api_keys_secret_version
    }
  }

  depends_on = [
    google_project_iam_member.build,
    google_storage_bucket_iam_member.build_reads_source,
    google_secret_manager_secret_iam_member.api_reads_keys,
  ]
}

resource "google_cloudfunctions2_function" "ingest" {
  name        = "soul-ingest"
  location    = var.region
  description = "Soul soul-requests consumer (Pub/Sub push, CloudEvent target `ingest`)"
  labels      = var.labels

  build_config {
    runtime         = "python311"
    entry_point     = "ingest"
    service_account = google_service_account.build.id

    source {
      storage_source {
        bucket = local.functions_source.bucket
        object = local.functions_source.object
      }
    }
  }

  service_config {
    service_account_email            = google_service_account.api.email
    ingress_settings                 = var.ingest_ingress # Pub/Sub push of this project counts as internal
    all_traffic_on_latest_revision   = true
    available_memory                 = var.api_memory
    available_cpu                    = "1"
    max_instance_request_concurrency = var.api_concurrency
    min_instance_count               = 0
    max_instance_count               = var.ingest_max_instances
    timeout_seconds                  = 60

    # The platform verifies the push subscription's OIDC token (invoker IAM below) before a request arrives.
    environment_variables = merge(local.functions_env, { SOUL_AUTH_MODE = "platform" })
  }

  depends_on = [
    google_project_iam_member.build,
    google_storage_bucket_iam_member.build_reads_source,
  ]
}

resource "google_cloudfunctions2_function" "webhooks" {
  name        = "soul-webhooks"
  location    = var.region
  description = "Soul webhook deliveries (soul-events push, target `webhooks`)"
  labels      = var.labels

  build_config {
    runtime         = "python311"
    entry_point     = "webhooks"
    service_account = google_service_account.build.id

    source {
      storage_source {
        bucket = local.functions_source.bucket
        object = local.functions_source.object
      }
    }
  }

  service_config {
    service_account_email            = google_service_account.webhooks.email
    ingress_settings                 = "ALLOW_INTERNAL_ONLY" # only the push subscription calls it
    all_traffic_on_latest_revision   = true
    available_memory                 = var.api_memory
    available_cpu                    = "1"
    max_instance_request_concurrency = var.api_concurrency
    min_instance_count               = 0
    max_instance_count               = var.webhooks_max_instances
    timeout_seconds                  = 300 # bounded retries with backoff inside one push
    environment_variables            = merge(local.functions_env, { SOUL_AUTH_MODE = "platform" })

    dynamic "secret_environment_variables" {
      for_each = var.webhook_secret_id != "" ? [var.webhook_secret_id] : []
      content {
        key        = "SOUL_WEBHOOK_SECRET"
        project_id = var.project_id
        secret     = secret_environment_variables.value
        version    = "latest"
      }
    }
  }

  depends_on = [
    google_project_iam_member.build,
    google_storage_bucket_iam_member.build_reads_source,
    google_secret_manager_secret_iam_member.webhooks_reads_secret,
  ]
}

resource "google_cloudfunctions2_function" "reconcile" {
  name        = "soul-reconcile"
  location    = var.region
  description = "Soul reconciler (Cloud Scheduler every minute, target `reconcile`)"
  labels      = var.labels

  build_config {
    runtime         = "python311"
    entry_point     = "reconcile"
    service_account = google_service_account.build.id

    source {
      storage_source {
        bucket = local.functions_source.bucket
        object = local.functions_source.object
      }
    }
  }

  service_config {
    service_account_email            = google_service_account.reconciler.email
    ingress_settings                 = "ALLOW_INTERNAL_ONLY" # Cloud Scheduler of this project counts as internal
    all_traffic_on_latest_revision   = true
    available_memory                 = var.api_memory
    available_cpu                    = "1"
    max_instance_request_concurrency = 1 # one pass at a time
    min_instance_count               = 0
    max_instance_count               = 1
    timeout_seconds                  = 120
    environment_variables            = merge(local.functions_env, { SOUL_AUTH_MODE = "platform" })
  }

  depends_on = [
    google_project_iam_member.build,
    google_storage_bucket_iam_member.build_reads_source,
    google_project_iam_member.reconciler_firestore,
    google_pubsub_topic_iam_member.reconciler_publishes,
  ]
}

# --- Invoker IAM on the functions' Cloud Run services (gen2 functions are invoked through Cloud Run). ---------

resource "google_cloud_run_v2_service_iam_member" "api_invokers" {
  for_each = toset(var.api_caller_service_accounts)

  location = var.region
  name     = google_cloudfunctions2_function.api.name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${each.value}"
}

resource "google_cloud_run_v2_service_iam_member" "api_public" {
  count = var.api_allow_unauthenticated ? 1 : 0

  location = var.region
  name     = google_cloudfunctions2_function.api.name
  role     = "roles/run.invoker"
  member   = "allUsers"
}

# The push subscriptions' identity invokes the two push-fed functions (and nothing else).
resource "google_cloud_run_v2_service_iam_member" "push_invokes" {
  for_each = {
    ingest   = google_cloudfunctions2_function.ingest.name
    webhooks = google_cloudfunctions2_function.webhooks.name
  }

  location = var.region
  name     = each.value
  role     = "roles/run.invoker"
  member   = google_service_account.push.member
}

moved {
  from = google_cloud_run_v2_service_iam_member.ingest_invoker_push
  to   = google_cloud_run_v2_service_iam_member.push_invokes["ingest"]
}

resource "google_cloud_run_v2_service_iam_member" "scheduler_invokes_reconcile" {
  location = var.region
  name     = google_cloudfunctions2_function.reconcile.name
  role     = "roles/run.invoker"
  member   = google_service_account.scheduler.member
}
