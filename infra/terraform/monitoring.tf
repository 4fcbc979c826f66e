# Operations: log-based metrics from the runner's `job_finished` log line (status, gpu_seconds), alert policies
# sent to var.alert_notification_channels, and one dashboard (backlog, runners, jobs/s, GPU-seconds).
# The runner logs JSON (functions/logs.py: `message` is the event name); on Container-Optimized OS the logging
# agent parses a container's JSON lines into jsonPayload.

locals {
  runner_log_filter = "resource.type=\"gce_instance\" AND jsonPayload.message=\"job_finished\""
  pubsub_metric     = "pubsub.googleapis.com/subscription"

  dead_letter_subscriptions = [
    google_pubsub_subscription.jobs_dead_letter.name,
    google_pubsub_subscription.requests_dead_letter.name,
    google_pubsub_subscription.events_webhooks_dead_letter.name,
  ]
  runner_subscription_names = [for lane, name in local.runner_subscriptions : name]

  # Monitoring filters match several label values with a regular expression (names are [a-z-] only).
  runner_subscriptions_filter = "monitoring.regex.full_match(\"${join("|", local.runner_subscription_names)}\")"
  dead_letter_filter          = "monitoring.regex.full_match(\"${join("|", local.dead_letter_subscriptions)}\")"
}

resource "google_logging_metric" "jobs_finished" {
  name        = "soul_jobs_finished"
  description = "Jobs the runners finished, by final status (runner log `job_finished`)."
  filter      = local.runner_log_filter

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"

    labels {
      key         = "status"
      value_type  = "STRING"
      description = "succeeded, failed, canceled"
    }
  }

  label_extractors = {
    status = "EXTRACT(jsonPayload.status)"
  }

  depends_on = [google_project_service.enabled]
}

resource "google_logging_metric" "gpu_seconds" {
  name            = "soul_gpu_seconds"
  description     = "GPU-seconds per finished job (runner log `job_finished`, field gpu_seconds)."
  filter          = "${local.runner_log_filter} AND jsonPayload.gpu_seconds>=0"
  value_extractor = "EXTRACT(jsonPayload.gpu_seconds)"

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "DISTRIBUTION"
    unit        = "s"
  }

  bucket_options {
    exponential_buckets {
      num_finite_buckets = 32
      growth_factor      = 1.5
      scale              = 0.1
    }
  }

  depends_on = [google_project_service.enabled]
}

resource "google_monitoring_alert_policy" "dead_letters" {
  display_name          = "Soul: messages in a dead-letter subscription"
  combiner              = "OR"
  notification_channels = var.alert_notification_channels
  documentation {
    content   = "A message was given up on after ${local.max_delivery_attempts} attempts. Inspect and replay with `soul dead-letters` (docs/OPERATIONS in the repository)."
    mime_type = "text/markdown"
  }

  conditions {
    display_name = "dead-letter backlog > 0"
    condition_threshold {
      filter          = "resource.type = \"pubsub_subscription\" AND metric.type = \"${local.pubsub_metric}/num_undelivered_messages\" AND resource.label.subscription_id = ${local.dead_letter_filter}"
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "60s"
      aggregations {
        alignment_period   = "60s"
        per_series_aligner = "ALIGN_MAX"
      }
    }
  }
}

resource "google_monitoring_alert_policy" "oldest_unacked" {
  display_name          = "Soul: a job has waited too long in a lane"
  combiner              = "OR"
  notification_channels = var.alert_notification_channels
  documentation {
    content   = "The oldest undelivered job is older than ${var.alert_oldest_unacked_seconds} s: the fleet is at max_replicas, out of GPU quota or stocked out."
    mime_type = "text/markdown"
  }

  conditions {
    display_name = "oldest unacked message age"
    condition_threshold {
      filter          = "resource.type = \"pubsub_subscription\" AND metric.type = \"${local.pubsub_metric}/oldest_unacked_message_age\" AND resource.label.subscription_id = ${local.runner_subscriptions_filter}"
      comparison      = "COMPARISON_GT"
      threshold_value = var.alert_oldest_unacked_seconds
      duration        = "300s"
      aggregations {
        alignment_period   = "60s"
        per_series_aligner = "ALIGN_MAX"
      }
    }
  }
}

resource "google_monitoring_alert_policy" "job_failure_rate" {
  display_name          = "Soul: job failure rate"
  combiner              = "OR"
  notification_channels = var.alert_notification_channels
  documentation {
    content   = "More than ${var.alert_job_failure_ratio * 100}% of the jobs finished in the last 15 minutes failed. Runner logs: jsonPayload.message=\"job_failed\"."
    mime_type = "text/markdown"
  }

  conditions {
    display_name = "failed / finished jobs"
    condition_threshold {
      filter             = "resource.type = \"gce_instance\" AND metric.type = \"logging.googleapis.com/user/${google_logging_metric.jobs_finished.name}\" AND metric.label.status = \"failed\""
      denominator_filter = "resource.type = \"gce_instance\" AND metric.type = \"logging.googleapis.com/user/${google_logging_metric.jobs_finished.name}\""
      comparison         = "COMPARISON_GT"
      threshold_value    = var.alert_job_failure_ratio
      duration           = "0s"
      aggregations {
        alignment_period     = "900s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
      }
      denominator_aggregations {
        alignment_period     = "900s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
      }
    }
  }
}

resource "google_monitoring_alert_policy" "no_runner_with_backlog" {
  display_name          = "Soul: backlog but no runner"
  combiner              = "AND"
  notification_channels = var.alert_notification_channels
  documentation {
    content   = "Jobs are waiting and the runner group has had no VM for 15 minutes: GPU quota (GPUS_ALL_REGIONS, per region), stockout in every zone of runner_zones, or the autoscaler is off. See the MIG's errors: `gcloud compute instance-groups managed list-errors soul-runner --region ${var.region}`."
    mime_type = "text/markdown"
  }

  conditions {
    display_name = "backlog > 0"
    condition_threshold {
      filter          = "resource.type = \"pubsub_subscription\" AND metric.type = \"${local.pubsub_metric}/num_undelivered_messages\" AND resource.label.subscription_id = ${local.runner_subscriptions_filter}"
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "900s"
      aggregations {
        alignment_period     = "60s"
        per_series_aligner   = "ALIGN_MAX"
        cross_series_reducer = "REDUCE_SUM"
      }
    }
  }

  conditions {
    display_name = "runner group size = 0"
    condition_threshold {
      filter          = "resource.type = \"instance_group\" AND metric.type = \"compute.googleapis.com/instance_group/size\" AND resource.label.instance_group_name = \"${google_compute_region_instance_group_manager.runner.name}\""
      comparison      = "COMPARISON_LT"
      threshold_value = 1
      duration        = "900s"
      aggregations {
        alignment_period     = "60s"
        per_series_aligner   = "ALIGN_MAX"
        cross_series_reducer = "REDUCE_SUM"
      }
    }
  }
}

resource "google_monitoring_dashboard" "soul" {
  dashboard_json = jsonencode({
    displayName = "Soul"
    mosaicLayout = {
      columns = 12
      tiles = concat([
        for i, w in [
          {
            title  = "Backlog per lane (undelivered jobs)"
            filter = "resource.type = \"pubsub_subscription\" AND metric.type = \"${local.pubsub_metric}/num_undelivered_messages\" AND resource.label.subscription_id = ${local.runner_subscriptions_filter}"
            align  = "ALIGN_MAX", reduce = "REDUCE_SUM", group = ["resource.label.subscription_id"]
          },
          {
            title  = "Runner VMs"
            filter = "resource.type = \"instance_group\" AND metric.type = \"compute.googleapis.com/instance_group/size\" AND resource.label.instance_group_name = \"${google_compute_region_instance_group_manager.runner.name}\""
            align  = "ALIGN_MAX", reduce = "REDUCE_SUM", group = []
          },
          {
            title  = "Jobs finished per second, by status"
            filter = "metric.type = \"logging.googleapis.com/user/${google_logging_metric.jobs_finished.name}\""
            align  = "ALIGN_RATE", reduce = "REDUCE_SUM", group = ["metric.label.status"]
          },
          ] : {
          xPos   = (i % 2) * 6
          yPos   = floor(i / 2) * 4
          width  = 6
          height = 4
          widget = {
            title = w.title
            xyChart = {
              dataSets = [{
                plotType = "LINE"
                timeSeriesQuery = {
                  timeSeriesFilter = {
                    filter = w.filter
                    aggregation = {
                      alignmentPeriod    = "60s"
                      perSeriesAligner   = w.align
                      crossSeriesReducer = w.reduce
                      groupByFields      = w.group
                    }
                  }
                }
              }]
            }
          }
        }
        ],
        [{
          # The sum of a distribution metric is only reachable by PromQL (a log-based distribution is a histogram).
          xPos   = 0
          yPos   = 8
          width  = 12
          height = 4
          widget = {
            title = "GPU-seconds per minute"
            xyChart = {
              dataSets = [{
                plotType = "LINE"
                timeSeriesQuery = {
                  prometheusQuery = "sum(increase(logging_googleapis_com:user_${google_logging_metric.gpu_seconds.name}_sum[1m]))"
                }
              }]
            }
          }
        }],
      )
    }
  })

  depends_on = [google_project_service.enabled]
}
