# Topics and subscriptions of the pipeline (names: schemas/names.py). The emulators get the same shapes from
# emulators/provision.py, except the retry backoff (short there, so that tests do not wait).

resource "google_pubsub_topic" "jobs" {
  name         = local.topic_jobs
  labels       = var.labels
  kms_key_name = local.kms_key_id
  depends_on   = [google_project_service.enabled, google_kms_crypto_key_iam_member.service_agents]
}

resource "google_pubsub_topic" "jobs_dead_letter" {
  name         = local.topic_jobs_dead_letter
  labels       = var.labels
  kms_key_name = local.kms_key_id
  depends_on   = [google_project_service.enabled, google_kms_crypto_key_iam_member.service_agents]
}

resource "google_pubsub_topic" "events" {
  name         = local.topic_events
  labels       = var.labels
  kms_key_name = local.kms_key_id
  depends_on   = [google_project_service.enabled, google_kms_crypto_key_iam_member.service_agents]
}

resource "google_pubsub_topic" "requests" {
  name         = local.topic_requests
  labels       = var.labels
  kms_key_name = local.kms_key_id
  depends_on   = [google_project_service.enabled, google_kms_crypto_key_iam_member.service_agents]
}

resource "google_pubsub_topic" "requests_dead_letter" {
  name         = local.topic_requests_dead_letter
  labels       = var.labels
  kms_key_name = local.kms_key_id
  depends_on   = [google_project_service.enabled, google_kms_crypto_key_iam_member.service_agents]
}

resource "google_pubsub_topic" "jobs_background" {
  name         = local.topic_jobs_background
  labels       = var.labels
  kms_key_name = local.kms_key_id
  depends_on   = [google_project_service.enabled, google_kms_crypto_key_iam_member.service_agents]
}

# The runners' work queues, one per lane (schemas/jobs.py JobLane): interactive (soul-jobs, a user is waiting)
# and background (soul-jobs-background, pre-renders and bulk work). Same delivery policy on both; the runner takes
# interactive work first, and the autoscaler (runner.tf) counts both backlogs.
#
# retry_policy 10s..600s (the emulator setup uses ~1s..30s so that tests are quick). Backoff only applies to a
# message that was nacked or whose ack deadline expired, i.e. a failed or crashed attempt: a message the runner
# is working on has its deadline extended by the client's lease management. In production a failed attempt is
# usually a transient backend error, a GPU out of memory, or a runner being replaced; retrying it after 1 s on
# a one-job-at-a-time GPU fleet would hand it straight back to the same sick VM and burn the 5 attempts in
# seconds. Exponential backoff from 10 s up to Pub/Sub's maximum of 600 s spreads the 5 attempts over several
# minutes, long enough for a restart or a transient outage to pass, before the message goes to the dead-letter
# topic. Lost work does not depend on it: the reconciler re-publishes jobs whose lease expired.
locals {
  runner_lanes = {
    interactive = { subscription = local.sub_runner, topic = google_pubsub_topic.jobs.id }
    background  = { subscription = local.sub_runner_background, topic = google_pubsub_topic.jobs_background.id }
  }
}

resource "google_pubsub_subscription" "runner" {
  for_each = local.runner_lanes

  name   = each.value.subscription
  topic  = each.value.topic
  labels = merge(var.labels, { lane = each.key })

  ack_deadline_seconds         = 60
  message_retention_duration   = "604800s" # 7 days
  retain_acked_messages        = false
  enable_exactly_once_delivery = true
  enable_message_ordering      = false

  expiration_policy {
    ttl = "" # never expires, even with no runner attached for a while
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.jobs_dead_letter.id
    max_delivery_attempts = local.max_delivery_attempts
  }

  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }
}

# The interactive subscription was a single resource before the lanes: keep its state (no recreate, no lost
# messages) on upgrade.
moved {
  from = google_pubsub_subscription.runner
  to   = google_pubsub_subscription.runner["interactive"]
}

# Read by operators (soul_cli dead-letters) to inspect and replay what the runner could never process.
resource "google_pubsub_subscription" "jobs_dead_letter" {
  name   = local.sub_jobs_dead_letter
  topic  = google_pubsub_topic.jobs_dead_letter.id
  labels = var.labels

  ack_deadline_seconds       = 60
  message_retention_duration = "604800s"

  expiration_policy {
    ttl = ""
  }
}

# A default consumer of completion events (UIs poll /tasks; services may add their own subscriptions).
resource "google_pubsub_subscription" "events" {
  name   = local.sub_events
  topic  = google_pubsub_topic.events.id
  labels = var.labels

  ack_deadline_seconds       = 30
  message_retention_duration = "604800s"

  expiration_policy {
    ttl = ""
  }
}

# soul-requests -> the `ingest` function: a push subscription with an OIDC token of the push service account,
# exactly as the emulators wire it locally (the function receives the wrapped Pub/Sub push body, which
# functions-framework turns into a CloudEvent). An explicit subscription instead of an Eventarc trigger gives it
# the name the code knows, a dead-letter topic and a retry policy.
resource "google_pubsub_subscription" "requests_push" {
  name   = local.sub_requests_push
  topic  = google_pubsub_topic.requests.id
  labels = var.labels

  ack_deadline_seconds       = 60 # how long Pub/Sub waits for the function's answer
  message_retention_duration = "604800s"

  push_config {
    push_endpoint = google_cloudfunctions2_function.ingest.service_config[0].uri

    oidc_token {
      service_account_email = google_service_account.push.email
      audience              = google_cloudfunctions2_function.ingest.service_config[0].uri
    }
  }

  expiration_policy {
    ttl = ""
  }

  # ingest answers 2xx for bad input (it publishes soul.request.rejected); only backend outages fail it.
  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.requests_dead_letter.id
    max_delivery_attempts = local.max_delivery_attempts
  }

  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }

  depends_on = [google_cloud_run_v2_service_iam_member.push_invokes]
}

resource "google_pubsub_subscription" "requests_dead_letter" {
  name   = local.sub_requests_dead_letter
  topic  = google_pubsub_topic.requests_dead_letter.id
  labels = var.labels

  message_retention_duration = "604800s"

  expiration_policy {
    ttl = ""
  }
}

# A webhook target's next attempt (the event's message, with the target and when it is due), published by the
# `webhooks` function and pushed back to it: one short push per retry, so failing targets never hold the pushes
# of soul-events-webhooks (nor, by their nacks, its push window).
resource "google_pubsub_topic" "webhook_retries" {
  name         = local.topic_webhook_retries
  labels       = var.labels
  kms_key_name = local.kms_key_id
  depends_on   = [google_project_service.enabled, google_kms_crypto_key_iam_member.service_agents]
}

# The `webhooks` function's two push subscriptions (functions/, written for issue 12). soul-events: the first
# attempt of each signed webhook to the URLs the callers gave, every target of the event in one push (rounds of
# its parallel senders); a target to retry goes to soul-webhook-retries, whose push waits until that attempt is
# due (<= the backoff's maximum) and makes it. Pub/Sub retries only when the function fails outright.
locals {
  webhooks_pushes = {
    events = {
      subscription = local.sub_events_webhooks
      topic        = google_pubsub_topic.events.id
      ack_deadline = 300
    }
    retries = {
      subscription = local.sub_webhook_retries
      topic        = google_pubsub_topic.webhook_retries.id
      ack_deadline = 60
    }
  }
}

resource "google_pubsub_subscription" "webhooks_push" {
  for_each = local.webhooks_pushes

  name   = each.value.subscription
  topic  = each.value.topic
  labels = var.labels

  ack_deadline_seconds       = each.value.ack_deadline
  message_retention_duration = "604800s"

  push_config {
    push_endpoint = google_cloudfunctions2_function.webhooks.service_config[0].uri

    oidc_token {
      service_account_email = google_service_account.push.email
      audience              = google_cloudfunctions2_function.webhooks.service_config[0].uri
    }
  }

  expiration_policy {
    ttl = ""
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.events_webhooks_dead_letter.id
    max_delivery_attempts = local.max_delivery_attempts
  }

  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }

  depends_on = [google_cloud_run_v2_service_iam_member.push_invokes]
}

moved {
  from = google_pubsub_subscription.events_webhooks
  to   = google_pubsub_subscription.webhooks_push["events"]
}

resource "google_pubsub_topic" "events_webhooks_dead_letter" {
  name         = local.topic_events_webhooks_dead_letter
  labels       = var.labels
  kms_key_name = local.kms_key_id
  depends_on   = [google_project_service.enabled, google_kms_crypto_key_iam_member.service_agents]
}

resource "google_pubsub_subscription" "events_webhooks_dead_letter" {
  name   = local.sub_events_webhooks_dead_letter
  topic  = google_pubsub_topic.events_webhooks_dead_letter.id
  labels = var.labels

  message_retention_duration = "604800s"

  expiration_policy {
    ttl = ""
  }
}

# --- What the Pub/Sub service agent needs for dead-lettering: publish on the dead-letter topic, and subscribe
# on the source subscription (to acknowledge the forwarded message there).

resource "google_pubsub_topic_iam_member" "agent_publishes_jobs_dead_letter" {
  topic  = google_pubsub_topic.jobs_dead_letter.name
  role   = "roles/pubsub.publisher"
  member = local.pubsub_service_agent
}

resource "google_pubsub_subscription_iam_member" "agent_subscribes_runner" {
  for_each = google_pubsub_subscription.runner

  subscription = each.value.name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_service_agent
}

resource "google_pubsub_topic_iam_member" "agent_publishes_requests_dead_letter" {
  topic  = google_pubsub_topic.requests_dead_letter.name
  role   = "roles/pubsub.publisher"
  member = local.pubsub_service_agent
}

resource "google_pubsub_subscription_iam_member" "agent_subscribes_requests_push" {
  subscription = google_pubsub_subscription.requests_push.name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_service_agent
}

resource "google_pubsub_topic_iam_member" "agent_publishes_events_webhooks_dead_letter" {
  topic  = google_pubsub_topic.events_webhooks_dead_letter.name
  role   = "roles/pubsub.publisher"
  member = local.pubsub_service_agent
}

resource "google_pubsub_subscription_iam_member" "agent_subscribes_webhooks_push" {
  for_each = google_pubsub_subscription.webhooks_push

  subscription = each.value.name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_service_agent
}

moved {
  from = google_pubsub_subscription_iam_member.agent_subscribes_events_webhooks
  to   = google_pubsub_subscription_iam_member.agent_subscribes_webhooks_push["events"]
}
