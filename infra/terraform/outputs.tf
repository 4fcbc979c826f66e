output "api_url" {
  description = "URL of the api function (callers send an ID token unless api_allow_unauthenticated, plus an API key)."
  value       = google_cloudfunctions2_function.api.service_config[0].uri
}

output "ingest_url" {
  description = "URL of the ingest function (internal only; fed by the soul-requests push subscription)."
  value       = google_cloudfunctions2_function.ingest.service_config[0].uri
}

output "media_bucket" {
  description = "GCS_BUCKET_NAME."
  value       = google_storage_bucket.media.name
}

output "functions_source_object" {
  description = "The deployed source archive."
  value       = "gs://${google_storage_bucket.functions_source.name}/${google_storage_bucket_object.functions_source.name}"
}

output "runner_image_repository" {
  description = "Push the runner image here: <this>/soul-runner:<tag>."
  value       = "${google_artifact_registry_repository.soul.location}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.soul.repository_id}"
}

output "topics" {
  description = "Pub/Sub topics."
  value = {
    jobs                 = google_pubsub_topic.jobs.id
    jobs_background      = google_pubsub_topic.jobs_background.id
    jobs_dead_letter     = google_pubsub_topic.jobs_dead_letter.id
    events               = google_pubsub_topic.events.id
    requests             = google_pubsub_topic.requests.id
    requests_dead_letter = google_pubsub_topic.requests_dead_letter.id
  }
}

output "subscriptions" {
  description = "Pub/Sub subscriptions."
  value = {
    runner               = google_pubsub_subscription.runner["interactive"].id
    runner_background    = google_pubsub_subscription.runner["background"].id
    events_webhooks      = google_pubsub_subscription.webhooks_push["events"].id
    webhook_retries      = google_pubsub_subscription.webhooks_push["retries"].id
    jobs_dead_letter     = google_pubsub_subscription.jobs_dead_letter.id
    events               = google_pubsub_subscription.events.id
    requests_push        = google_pubsub_subscription.requests_push.id
    requests_dead_letter = google_pubsub_subscription.requests_dead_letter.id
  }
}

output "service_accounts" {
  description = "Service accounts created here."
  value = {
    api        = google_service_account.api.email
    runner     = google_service_account.runner.email
    push       = google_service_account.push.email
    build      = google_service_account.build.email
    webhooks   = google_service_account.webhooks.email
    reconciler = google_service_account.reconciler.email
    scheduler  = google_service_account.scheduler.email
  }
}

output "runner_instance_group" {
  description = "Regional managed instance group of the GPU runners (sized by the autoscaler on the backlog)."
  value       = google_compute_region_instance_group_manager.runner.instance_group
}

output "webhooks_url" {
  description = "URL of the webhooks function (internal only; fed by the soul-events-webhooks push subscription)."
  value       = google_cloudfunctions2_function.webhooks.service_config[0].uri
}

output "reconcile_url" {
  description = "URL of the reconcile function (invoked by Cloud Scheduler every minute)."
  value       = google_cloudfunctions2_function.reconcile.service_config[0].uri
}

output "runner_network" {
  description = "Network of the runner VMs."
  value       = local.runner_network
}
