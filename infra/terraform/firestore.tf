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

# Every query the code runs is recorded by the gateway (soul_common/firestore.py) and checked against these
# declarations with Firestore's documented index rules (soul_common/indexes.py) over the whole test suite
# (tests/conftest.py): a query without its index fails `make test`. Queries that need no composite index (served
# by the automatic single-field indexes or by merging them): equality filters only (count() per status/type, the
# reconciler's scans, variants of a pk, a tenant's webhooks), one field's range (warm-pool askers), documents by id.
locals {
  firestore_indexes = {
    # GET /tasks/stats/summary: recent succeeded jobs (jobs.py recent_finished: status ==, finished_at desc).
    jobs_status_finished = {
      collection = "jobs"
      fields     = [["status", "ASCENDING"], ["finished_at", "DESCENDING"], ["__name__", "DESCENDING"]]
    }
    # GET /tasks/{id} of a queued task: count of queued jobs of its lane created before it (count_queued_before).
    jobs_status_lane_created = {
      collection = "jobs"
      fields     = [["status", "ASCENDING"], ["lane", "ASCENDING"], ["created_at", "ASCENDING"]]
    }
    # The GPU-seconds quota (functions/adapters/firestore/jobs.py gpu_seconds_since, soul_common/rollups.py):
    # sum(gpu_seconds) over the shards of a tenant's day in usage/{tenant}/days.
    usage_day_gpu_seconds = {
      collection = "days"
      fields     = [["day", "ASCENDING"], ["gpu_seconds", "ASCENDING"]]
    }
    # A new job's jobs-per-hour check (functions/adapters/firestore/quotas.py total): sum(n) over the shards of
    # one counter group in tenants/{tenant}/counters, one aggregation instead of a read per shard.
    counters_group_n = {
      collection = "counters"
      fields     = [["group", "ASCENDING"], ["n", "ASCENDING"]]
    }
    # Who waits on a job (functions/adapters/firestore/interest.py): GET /tasks lists a tenant's tasks (its
    # markers: scope == "tenant") or one end user's (user_key ==), optionally by type and soul, newest job first,
    # over the `interest` collection group (jobs/*/interest). Joiners write these, never the job document. By type
    # and soul at once, Firestore merges the by-type and by-soul indexes (soul_common/indexes.py rule 5): no
    # index of its own, so each record costs two index entries fewer to write.
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
  }

  # Single-field settings (google_firestore_field): `indexes = null` keeps Firestore's automatic indexes, a list
  # replaces them ([] exempts the field: nothing queries it alone, and an index on a timestamp that only grows
  # hotspots a collection written more than ~500 times a second); `ttl = true` lets Firestore delete a document
  # after the time in that field (soul_common/retention.py says who writes it; tests check the two agree).
  firestore_fields = {
    # TTL policies: one per short-lived kind in soul_common/retention.py (tests/unit/test_retention.py).
    idempotency_expires_at   = { collection = "idempotency", field = "expires_at", ttl = true, indexes = [] }
    rate_expires_at          = { collection = "rate", field = "expires_at", ttl = true, indexes = [] }
    counters_expires_at      = { collection = "counters", field = "expires_at", ttl = true, indexes = [] }
    jobs_expires_at          = { collection = "jobs", field = "expires_at", ttl = true, indexes = [] }
    job_heads_expires_at     = { collection = "job_heads", field = "expires_at", ttl = true, indexes = [] }
    webhooks_expires_at      = { collection = "webhooks", field = "expires_at", ttl = true, indexes = [] }
    deliveries_expires_at    = { collection = "deliveries", field = "expires_at", ttl = true, indexes = [] }
    askers_expires_at        = { collection = "askers", field = "expires_at", ttl = true, indexes = [] }
    webhook_slots_expires_at = { collection = "webhook_slots", field = "expires_at", ttl = true, indexes = [] }
    interest_expires_at      = { collection = "interest", field = "expires_at", ttl = true, indexes = [] }
    runner_stats_expires_at  = { collection = "runner_stats", field = "expires_at", ttl = true, indexes = [] }
    # warm_pool/{pk}/tenants/{tenant} documents that hold only a day's counter; the policy applies to every
    # collection with id "tenants", and only warm_pool.py count_made writes the field in one.
    warm_tenants_expires_at  = { collection = "tenants", field = "expires_at", ttl = true, indexes = [] }
    # GET /tasks/stats/summary counts delivered pre-renders over every key: a collection-group equality filter.
    prerenders_delivered = {
      collection = "prerenders", field = "delivered", ttl = false,
      indexes    = [["ASCENDING", "COLLECTION"], ["DESCENDING", "COLLECTION"], ["ASCENDING", "COLLECTION_GROUP"]]
    }
    # Job fields written on every claim, heartbeat and progress tick, or large maps: no query reads them alone.
    jobs_updated_at       = { collection = "jobs", field = "updated_at", ttl = false, indexes = [] }
    jobs_created_at       = { collection = "jobs", field = "created_at", ttl = false, indexes = [] }
    jobs_lease_expires_at = { collection = "jobs", field = "lease_expires_at", ttl = false, indexes = [] }
    jobs_progress         = { collection = "jobs", field = "progress", ttl = false, indexes = [] }
    jobs_eta_seconds      = { collection = "jobs", field = "eta_seconds", ttl = false, indexes = [] }
    jobs_request          = { collection = "jobs", field = "request", ttl = false, indexes = [] }
    jobs_result           = { collection = "jobs", field = "result", ttl = false, indexes = [] }
    jobs_requesters       = { collection = "jobs", field = "requesters", ttl = false, indexes = [] }
  }
}

resource "google_firestore_index" "indexes" {
  for_each = local.firestore_indexes

  database    = google_firestore_database.default.name
  collection  = each.value.collection
  query_scope = lookup(each.value, "scope", "COLLECTION")
  api_scope   = "ANY_API"

  dynamic "fields" {
    for_each = each.value.fields
    content {
      field_path   = fields.value[0]
      order        = fields.value[1] == "CONTAINS" ? null : fields.value[1]
      array_config = fields.value[1] == "CONTAINS" ? "CONTAINS" : null
    }
  }
}

resource "google_firestore_field" "fields" {
  for_each = local.firestore_fields

  database   = google_firestore_database.default.name
  collection = each.value.collection
  field      = each.value.field

  dynamic "ttl_config" {
    for_each = each.value.ttl ? [1] : []
    content {}
  }

  dynamic "index_config" {
    for_each = each.value.indexes == null ? [] : [1]
    content {
      dynamic "indexes" {
        for_each = each.value.indexes
        content {
          order        = indexes.value[0] == "CONTAINS" ? null : indexes.value[0]
          array_config = indexes.value[0] == "CONTAINS" ? "CONTAINS" : null
          query_scope  = indexes.value[1]
        }
      }
    }
  }
}

moved {
  from = google_firestore_field.idempotency_ttl
  to   = google_firestore_field.fields["idempotency_expires_at"]
}
