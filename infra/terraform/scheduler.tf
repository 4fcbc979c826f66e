# Reconciliation outside the fleet: Cloud Scheduler calls the `reconcile` function every minute with an OIDC token
# of soul-scheduler (the only account allowed to invoke it). With the runners scaled to zero, jobs whose message
# was lost are still re-published, and the backlog the autoscaler reads stays true.
resource "google_cloud_scheduler_job" "reconcile" {
  name             = "soul-reconcile"
  description      = "Soul reconciler: re-publish jobs whose message is lost (functions target `reconcile`)"
  region           = var.region
  schedule         = var.reconcile_schedule
  time_zone        = "Etc/UTC"
  attempt_deadline = "120s"

  retry_config {
    retry_count = 0 # the next minute is the retry
  }

  http_target {
    http_method = "POST"
    uri         = google_cloudfunctions2_function.reconcile.service_config[0].uri

    oidc_token {
      service_account_email = google_service_account.scheduler.email
      audience              = google_cloudfunctions2_function.reconcile.service_config[0].uri
    }
  }

  depends_on = [google_cloud_run_v2_service_iam_member.scheduler_invokes_reconcile]
}
