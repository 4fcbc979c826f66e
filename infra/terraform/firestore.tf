# Firestore (native mode), the source of truth: prompts, variants, users/*/seen, jobs, styles, idempotency,
# runner_stats. If the project already has a (default) database, import it instead of creating it:
#   terraform import google_firestore_database.default "projects/PROJECT_ID/databases/(default)"
resource "google_firestore_database" "default" {
  name                    = "(default)"
  location_id             = var.firestore_location
  type                    = "FIRESTORE_NATIVE"
  delete_protection_state = "DELETE_PROTECTION_ENABLED"
  deletion_policy         = "ABANDON" # `terraform destroy` leaves the data alone
  # Point-in-time recovery: any minute of the last 7 days can be read back or exported (a bad deploy, a wrong
  # bulk delete). Billed as storage of the retained versions.
  point_in_time_recovery_enablement = "POINT_IN_TIME_RECOVERY_ENABLED"

  depends_on = [google_project_service.enabled]
}

# Composite indexes for the queries in the code. Queries that need none (served by the automatic single-field
# indexes): variants where pk == ... ordered by __name__ (functions/adapters/firestore/prompts.py), jobs where status == ... (the
# reconciler, count() per status/type), documents read by id.
locals {
  firestore_indexes = {
    # GET /tasks: equality filters on any subset of status / type / soul_id / requested_by, newest first
    # (functions/adapters/firestore/prompts.py jobs_page: order by created_at desc, __name__ desc). One index per filter field;
    # Firestore merges them (index merging) for queries that combine several equality filters.
    jobs_status_created = {
      collection = "jobs"
      fields     = [["status", "ASCENDING"], ["created_at", "DESCENDING"], ["__name__", "DESCENDING"]]
    }
    jobs_type_created = {
      collection = "jobs"
      fields     = [["type", "ASCENDING"], ["created_at", "DESCENDING"], ["__name__", "DESCENDING"]]
    }
    jobs_soul_created = {
      collection = "jobs"
      fields     = [["soul_id", "ASCENDING"], ["created_at", "DESCENDING"], ["__name__", "DESCENDING"]]
    }
    jobs_requester_created = {
      collection = "jobs"
      fields     = [["requested_by", "ASCENDING"], ["created_at", "DESCENDING"], ["__name__", "DESCENDING"]]
    }
    # The most common combination (a user's jobs in one state) gets its own index rather than a merge.
    jobs_requester_status_created = {
      collection = "jobs"
      fields = [
        ["requested_by", "ASCENDING"], ["status", "ASCENDING"], ["created_at", "DESCENDING"], ["__name__", "DESCENDING"],
      ]
    }
    # GET /tasks/stats/summary: recent succeeded jobs (functions/adapters/firestore/prompts.py recent_finished: status ==, finished_at desc).
    jobs_status_finished = {
      collection = "jobs"
      fields     = [["status", "ASCENDING"], ["finished_at", "DESCENDING"], ["__name__", "DESCENDING"]]
    }
    # GET /tasks/{id} of a queued task: count of queued jobs of its lane created before it (store.count_queued_before).
    jobs_status_lane_created = {
      collection = "jobs"
      fields     = [["status", "ASCENDING"], ["lane", "ASCENDING"], ["created_at", "ASCENDING"]]
    }
    # GET /tasks/stats/summary: sum/avg of metrics.gpu_seconds over image jobs, and over succeeded ones (usage.py).
    jobs_type_gpu_seconds = {
      collection = "jobs"
      fields     = [["type", "ASCENDING"], ["metrics.gpu_seconds", "ASCENDING"]]
    }
    jobs_type_status_gpu_seconds = {
      collection = "jobs"
      fields     = [["type", "ASCENDING"], ["status", "ASCENDING"], ["metrics.gpu_seconds", "ASCENDING"]]
    }
    # Who waits on a job (functions/adapters/firestore/interest.py): GET /tasks lists a tenant's tasks (its
    # markers: scope == "tenant") or one end user's (user_key ==), optionally by type and soul, newest job first,
    # over the `interest` collection group (jobs/*/interest). Joiners write these, never the job document.
    interest_tenant_created = {
      collection = "interest"
      scope      = "COLLECTION_GROUP"
      fields     = [["tenant", "ASCENDING"], ["scope", "ASCENDING"], ["created_at", "DESCENDING"], ["__name__", "DESCENDING"]]
    }
    interest_tenant_type_created = {
      collection = "interest"
      scope      = "COLLECTION_GROUP"
      fields     = [["tenant", "ASCENDING"], ["scope", "ASCENDING"], ["type", "ASCENDING"], ["created_at", "DESCENDING"], ["__name__", "DESCENDING"]]
    }
    interest_tenant_soul_created = {
      collection = "interest"
      scope      = "COLLECTION_GROUP"
      fields     = [["tenant", "ASCENDING"], ["scope", "ASCENDING"], ["soul_id", "ASCENDING"], ["created_at", "DESCENDING"], ["__name__", "DESCENDING"]]
    }
    interest_tenant_type_soul_created = {
      collection = "interest"
      scope      = "COLLECTION_GROUP"
      fields     = [["tenant", "ASCENDING"], ["scope", "ASCENDING"], ["type", "ASCENDING"], ["soul_id", "ASCENDING"], ["created_at", "DESCENDING"], ["__name__", "DESCENDING"]]
    }
    interest_user_created = {
      collection = "interest"
      scope      = "COLLECTION_GROUP"
      fields     = [["tenant", "ASCENDING"], ["user_key", "ASCENDING"], ["created_at", "DESCENDING"], ["__name__", "DESCENDING"]]
    }
    interest_user_type_created = {
      collection = "interest"
      scope      = "COLLECTION_GROUP"
      fields     = [["tenant", "ASCENDING"], ["user_key", "ASCENDING"], ["type", "ASCENDING"], ["created_at", "DESCENDING"], ["__name__", "DESCENDING"]]
    }
    interest_user_soul_created = {
      collection = "interest"
      scope      = "COLLECTION_GROUP"
      fields     = [["tenant", "ASCENDING"], ["user_key", "ASCENDING"], ["soul_id", "ASCENDING"], ["created_at", "DESCENDING"], ["__name__", "DESCENDING"]]
    }
    interest_user_type_soul_created = {
      collection = "interest"
      scope      = "COLLECTION_GROUP"
      fields     = [["tenant", "ASCENDING"], ["user_key", "ASCENDING"], ["type", "ASCENDING"], ["soul_id", "ASCENDING"], ["created_at", "DESCENDING"], ["__name__", "DESCENDING"]]
    }
  }
}

resource "google_firestore_index" "indexes" {
  for_each = local.firestore_indexes

  database    = google_firestore_database.default.name
  collection  = each.value.collection
  query_scope = try(each.value.scope, "COLLECTION")
  api_scope   = "ANY_API"

  dynamic "fields" {
    for_each = each.value.fields
    content {
      field_path = fields.value[0]
      order      = fields.value[1]
    }
  }
}

# Idempotency-Key records carry expires_at (functions/services/idempotency.py): let Firestore delete them after it.
resource "google_firestore_field" "idempotency_ttl" {
  database   = google_firestore_database.default.name
  collection = "idempotency"
  field      = "expires_at"

  ttl_config {}

  # Nothing queries expires_at: no single-field indexes on it (avoids write hotspots on a timestamp field).
  index_config {}
}
