# Names are contracts shared with the code: they mirror schemas/names.py (change both together).
locals {
  topic_jobs             = "soul-jobs"
  topic_jobs_background  = "soul-jobs-background"
  topic_jobs_dead_letter = "soul-jobs-dead-letter"
  topic_events           = "soul-events"
  topic_requests         = "soul-requests"
  topic_webhook_retries  = "soul-webhook-retries"
  sub_runner             = "soul-jobs-runner"
  sub_runner_background  = "soul-jobs-background-runner"
  sub_events_webhooks    = "soul-events-webhooks"
  sub_jobs_dead_letter   = "soul-jobs-dead-letter-sub"
  sub_events             = "soul-events-sub"
  sub_requests_push      = "soul-requests-ingest"
  sub_webhook_retries    = "soul-webhook-retries-push"
  max_delivery_attempts  = 5 # schemas/names.py MAX_DELIVERY_ATTEMPTS

  # Infra-only names (no code reads them): where soul-requests messages that ingest keeps failing on end up.
  topic_requests_dead_letter = "soul-requests-dead-letter"
  sub_requests_dead_letter   = "soul-requests-dead-letter-sub"
  # Events (and retries of one target) the webhooks function kept failing on: Pub/Sub's attempts exhausted.
  topic_events_webhooks_dead_letter = "soul-events-webhooks-dead-letter"
  sub_events_webhooks_dead_letter   = "soul-events-webhooks-dead-letter-sub"

  # The runners' subscriptions, both lanes: what the runner pulls and what the autoscaler counts.
  runner_subscriptions = { for lane, sub in google_pubsub_subscription.runner : lane => sub.name }

  bucket_name     = var.bucket_name != "" ? var.bucket_name : "${var.project_id}-soul-media"
  bucket_location = var.bucket_location != "" ? var.bucket_location : upper(var.region)

  # The Pub/Sub service agent: moves undeliverable messages to dead-letter topics, mints push OIDC tokens.
  pubsub_service_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
}
