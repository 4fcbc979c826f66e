# ---------------------------------------------------------------------------------------------------------------
# Project and places
# ---------------------------------------------------------------------------------------------------------------

variable "project_id" {
  description = "GCP project that holds everything (Firestore, Pub/Sub, GCS, functions, runner VMs)."
  type        = string
}

variable "region" {
  description = "Region of the functions, the buckets, the Artifact Registry repository and the runner subnet."
  type        = string
  default     = "us-central1"
}

variable "runner_zones" {
  description = "Zones of var.region the runner group may place VMs in: every one must offer the GPU of runner_machine_type / runner_accelerator_type (gcloud compute accelerator-types list --filter=\"name=nvidia-l4\"). Several zones ride out one zone's stockout."
  type        = list(string)
  default     = ["us-central1-a", "us-central1-b", "us-central1-c"]

  validation {
    condition     = length(var.runner_zones) >= 1
    error_message = "runner_zones must name at least one zone."
  }
}

variable "firestore_location" {
  description = "Location of the (default) Firestore database: a multi-region (nam5, eur3) or a region. Immutable."
  type        = string
  default     = "nam5"
}

variable "labels" {
  description = "Labels put on the resources that take them."
  type        = map(string)
  default     = { app = "soul" }
}

# ---------------------------------------------------------------------------------------------------------------
# Media bucket
# ---------------------------------------------------------------------------------------------------------------

variable "bucket_name" {
  description = "Private media bucket (images/, videos/). Empty: \"<project_id>-soul-media\". Becomes GCS_BUCKET_NAME."
  type        = string
  default     = ""
}

variable "bucket_location" {
  description = "Location of the media bucket. Empty: var.region (next to the runners and the functions)."
  type        = string
  default     = ""
}

variable "media_delete_after_days" {
  description = "Lifecycle rule: delete media objects older than this many days. 0 keeps them forever. Deleting media breaks variants that still point at them: only set this with a matching cleanup of Firestore."
  type        = number
  default     = 0

  validation {
    condition     = var.media_delete_after_days >= 0
    error_message = "media_delete_after_days must be >= 0."
  }
}

variable "kms_key_id" {
  description = "Cloud KMS key (projects/P/locations/L/keyRings/R/cryptoKeys/K) that encrypts topics, buckets, the image repository and the runners' disks. Its location must match the buckets' (var.region by default). Empty: this module creates keyRings/soul-keys/cryptoKeys/soul-data in var.region."
  type        = string
  default     = ""
}

variable "access_log_days" {
  description = "Days the buckets' access logs are kept."
  type        = number
  default     = 90
}

variable "bucket_force_destroy" {
  description = "Let `terraform destroy` delete a non-empty media bucket. Keep false in production."
  type        = bool
  default     = false
}

# ---------------------------------------------------------------------------------------------------------------
# Functions (api, ingest)
# ---------------------------------------------------------------------------------------------------------------

variable "functions_source_zip" {
  description = "Local path of the archive made by infra/build_functions_source.sh. Empty: <this module>/../build/soul-functions.zip."
  type        = string
  default     = ""
}

variable "model_tag" {
  description = "SOUL_MODEL_TAG: names the model the runners serve; part of every prompt key. Change it whenever the weights change, so that old images are never served for the new model."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", var.model_tag))
    error_message = "model_tag: 1-64 characters of letters, digits, '.', '_' or '-'."
  }
}

variable "api_keys_secret_id" {
  description = "Secret Manager secret (id in this project) whose value is SOUL_API_KEYS: comma-separated API keys. Created outside Terraform so that no key reaches the state (see README)."
  type        = string
}

variable "api_keys_secret_version" {
  description = "Version of the API keys secret. Env-var secrets are read when an instance starts: with \"latest\", a rotated key reaches new instances only (redeploy to roll all)."
  type        = string
  default     = "latest"
}

variable "api_caller_service_accounts" {
  description = "Service-account emails of the backends allowed to invoke the api function (roles/run.invoker). They send an ID token for the function's URL."
  type        = list(string)
  default     = []
}

variable "api_allow_unauthenticated" {
  description = "Grant roles/run.invoker to allUsers on the api function. API keys are still required by the code (SOUL_REQUIRE_AUTH=true); only use this when callers cannot mint ID tokens."
  type        = bool
  default     = false
}

variable "api_public_base_url" {
  description = "SOUL_PUBLIC_BASE_URL: prefix of status_url in answers (e.g. your load balancer's https URL). Empty: relative URLs."
  type        = string
  default     = ""
}

variable "signed_url_ttl_seconds" {
  description = "SOUL_SIGNED_URL_TTL_S: lifetime of the V4 signed URLs handed to consumers."
  type        = number
  default     = 3600

  validation {
    condition     = var.signed_url_ttl_seconds >= 60 && var.signed_url_ttl_seconds <= 604800
    error_message = "signed_url_ttl_seconds must be within 60..604800 (V4 signed URLs last at most 7 days)."
  }
}

variable "api_min_instances" {
  description = "Minimum warm instances of the api function (0 = scale to zero, with cold starts)."
  type        = number
  default     = 0
}

variable "api_max_instances" {
  description = "Maximum instances of the api function."
  type        = number
  default     = 20
}

variable "api_concurrency" {
  description = "Concurrent non-stream requests per api instance: the router's threads (THREADS)."
  type        = number
  default     = 16
}

variable "api_streams_per_instance" {
  description = "Open event streams (GET /tasks/{id}/events) one api instance holds at most; they hold no thread. Cloud Run allows at most 1000 concurrent requests per instance in all."
  type        = number
  default     = 500

  validation {
    condition     = var.api_streams_per_instance >= 1 && var.api_streams_per_instance <= 900
    error_message = "api_streams_per_instance must be between 1 and 900 (with api_concurrency it must stay within Cloud Run's 1000 concurrent requests per instance)."
  }
}

variable "api_memory" {
  description = "Memory of one function instance."
  type        = string
  default     = "512Mi"
}

variable "ingest_max_instances" {
  description = "Maximum instances of the ingest function (bounds the push rate from soul-requests)."
  type        = number
  default     = 10
}

variable "ingest_ingress" {
  description = "Ingress of the ingest function. Pub/Sub push from this project counts as internal traffic; ALLOW_ALL (still invoker-IAM protected) is the fallback if a VPC Service Controls setup says otherwise."
  type        = string
  default     = "ALLOW_INTERNAL_ONLY"

  validation {
    condition     = contains(["ALLOW_INTERNAL_ONLY", "ALLOW_ALL"], var.ingest_ingress)
    error_message = "ingest_ingress must be ALLOW_INTERNAL_ONLY or ALLOW_ALL."
  }
}

variable "log_level" {
  description = "LOG_LEVEL of the functions and the runner."
  type        = string
  default     = "INFO"
}

# ---------------------------------------------------------------------------------------------------------------
# GPU runner
# ---------------------------------------------------------------------------------------------------------------

variable "runner_image" {
  description = "Runner container image (built from infra/runner.Dockerfile), e.g. us-central1-docker.pkg.dev/PROJECT/soul/soul-runner:v1. Prefer an immutable tag or a digest."
  type        = string
}

variable "runner_min_replicas" {
  description = "Fewest runner VMs the autoscaler keeps. 0 = scale to zero when both lanes are empty (the first job after idle waits for a VM to boot: driver, weights, model load, several minutes)."
  type        = number
  default     = 0

  validation {
    condition     = var.runner_min_replicas >= 0
    error_message = "runner_min_replicas must be >= 0."
  }
}

variable "runner_max_replicas" {
  description = "Most runner VMs the autoscaler may start (bounded by your GPU quota: GPUS_ALL_REGIONS and the region's per-GPU quota)."
  type        = number
  default     = 4

  validation {
    condition     = var.runner_max_replicas >= 1
    error_message = "runner_max_replicas must be >= 1."
  }
}

variable "runner_scale_in_window_seconds" {
  description = "Scale-in control: at most one VM is removed per this many seconds, so a drained VM finishes its last job first."
  type        = number
  default     = 600
}

variable "runner_autohealing_initial_delay_seconds" {
  description = "Seconds after a VM starts before its health check can recreate it: NVIDIA driver install + weights copy + model load. Also the autoscaler's cooldown (metrics of a booting VM are ignored)."
  type        = number
  default     = 1200

  validation {
    condition     = var.runner_autohealing_initial_delay_seconds >= 300 && var.runner_autohealing_initial_delay_seconds <= 3600
    error_message = "runner_autohealing_initial_delay_seconds must be within 300..3600 (a fresh GPU VM needs minutes)."
  }
}

variable "runner_health_port" {
  description = "SOUL_HEALTH_PORT: the runner's health responder (/healthz, /readyz), probed by the health check on GPU 0's container; GPU i publishes it on host port runner_health_port + i."
  type        = number
  default     = 8080
}

variable "runner_machine_type" {
  description = "Machine type of a runner VM: g2-standard-8 (1 x L4, 24 GB), a2-highgpu-1g (1 x A100 40 GB), a3-highgpu-8g (8 x H100)..."
  type        = string
  default     = "g2-standard-8"
}

variable "runner_accelerator_type" {
  description = "guest_accelerator type (nvidia-l4, nvidia-tesla-a100, nvidia-h100-80gb...). Empty: attach none explicitly (the GPUs of a2/a3/g2 machine types come with the machine type)."
  type        = string
  default     = "nvidia-l4"
}

variable "runner_gpus_per_vm" {
  description = "GPUs per runner VM. One runner container is started per GPU (MAX_CONCURRENT_TASKS=1 each). Must match the machine type."
  type        = number
  default     = 1

  validation {
    condition     = var.runner_gpus_per_vm >= 1 && var.runner_gpus_per_vm <= 16
    error_message = "runner_gpus_per_vm must be within 1..16."
  }
}

variable "runner_spot" {
  description = "Run the runners as Spot VMs (much cheaper; preempted at any time with ~30 s notice: running jobs are retried through their expired leases)."
  type        = bool
  default     = false
}

variable "runner_boot_image" {
  description = "Boot image of the runner VMs: Container-Optimized OS (the cloud-init below relies on cos-extensions for the NVIDIA driver)."
  type        = string
  default     = "projects/cos-cloud/global/images/family/cos-stable"
}

variable "runner_boot_disk_gb" {
  description = "Boot disk size; with models_gcs_uri the weights are copied onto it (SDXL + SVD are ~20 GB), plus the image (~10 GB)."
  type        = number
  default     = 100
}

variable "runner_gpu_driver_version" {
  description = "NVIDIA driver version for `cos-extensions install gpu -- --version=...`: latest, default, or a version number. The CUDA 12.x torch wheels need a driver >= 525; L4/H100 want a recent one."
  type        = string
  default     = "latest"
}

variable "runner_network" {
  description = "Existing VPC network of the runner VMs. Empty: this module creates network `soul-runner` with a subnet that has Private Google Access (network.tf). A network you name must give the runners a way to Google APIs (Private Google Access on the subnet, or Cloud NAT): they have no external IP."
  type        = string
  default     = ""
}

variable "runner_subnetwork" {
  description = "Subnetwork of the runner VMs in var.region, with runner_network (null: the network's subnet in the region, auto-mode networks only)."
  type        = string
  default     = null
}

variable "runner_subnet_cidr" {
  description = "IP range of the subnet this module creates (runner_network empty)."
  type        = string
  default     = "10.40.0.0/20"
}

variable "runner_cloud_nat" {
  description = "Add Cloud Router + Cloud NAT for the runners' network: internet egress for anything that is not a Google API. Not needed by the default deploy (Private Google Access covers Firestore, Pub/Sub, GCS, Artifact Registry, Logging)."
  type        = bool
  default     = false
}

variable "runner_shutdown_grace_seconds" {
  description = "SOUL_SHUTDOWN_GRACE_SECONDS: on SIGTERM the runner stops taking work and finishes the running job within this time. Keep it below the VM's shutdown window (~90 s on stop/delete, ~30 s on Spot preemption)."
  type        = number
  default     = 30
}

variable "runner_compile" {
  description = "SOUL_COMPILE of the runners: auto (what bench/gpu.py measured to pay on the card, else off), off, regional (the UNet's repeated blocks) or full."
  type        = string
  default     = "auto"
  validation {
    condition     = contains(["auto", "off", "regional", "full"], var.runner_compile)
    error_message = "runner_compile must be auto, off, regional or full."
  }
}

variable "runner_quantize" {
  description = "SOUL_QUANTIZE of the runners: auto, none, or fp8 (torchao, compute capability >= 8.9 only; elsewhere it runs unquantized)."
  type        = string
  default     = "auto"
  validation {
    condition     = contains(["auto", "none", "fp8"], var.runner_quantize)
    error_message = "runner_quantize must be auto, none or fp8."
  }
}

variable "runner_compile_fallback" {
  description = "What a runner does when no saved compile artifact matches: compile (once per key; later VMs load it) or eager."
  type        = string
  default     = "compile"
  validation {
    condition     = contains(["compile", "eager"], var.runner_compile_fallback)
    error_message = "runner_compile_fallback must be compile or eager."
  }
}

variable "runner_compile_shapes" {
  description = "Shapes compiled at start, WIDTHxHEIGHT:BATCH comma-separated (empty: 1024x1024:1)."
  type        = string
  default     = ""
}

variable "compile_cache_delete_after_days" {
  description = "Compile artifacts in the bucket (compile-cache/) older than this are deleted; a VM that misses one compiles and saves it again."
  type        = number
  default     = 30
}

variable "runner_env" {
  description = "Extra environment of the runner containers (e.g. DEVICE_MEMORY_FRACTION, SVD_NUM_FRAMES, SOUL_LEASE_SECONDS). Overrides the defaults set here."
  type        = map(string)
  default     = {}
}

# ---------------------------------------------------------------------------------------------------------------
# Model weights: exactly one of models_gcs_uri / models_disk_name
# ---------------------------------------------------------------------------------------------------------------

variable "models_gcs_uri" {
  description = "gs://BUCKET/PREFIX whose content is copied (gcloud storage rsync) to /models on each runner VM at boot."
  type        = string
  default     = ""

  validation {
    condition     = var.models_gcs_uri == "" || can(regex("^gs://[a-z0-9][a-z0-9._-]{1,221}[a-z0-9](/.*)?$", var.models_gcs_uri))
    error_message = "models_gcs_uri must look like gs://bucket/prefix."
  }
}

variable "models_disk_name" {
  description = "Existing ext4 persistent disk (in the single zone of runner_zones) holding the weights; attached READ_ONLY to every runner VM and mounted at /models."
  type        = string
  default     = ""
}

variable "sdxl_model_path" {
  description = "SDXL_MODEL inside the container: a diffusers folder or a single .safetensors file under /models."
  type        = string
  default     = "/models/sdxl"
}

variable "svd_model_path" {
  description = "SVD_MODEL inside the container: an img2vid-xt diffusers folder under /models."
  type        = string
  default     = "/models/svd"
}

# ---------------------------------------------------------------------------------------------------------------
# Webhooks, reconciler
# ---------------------------------------------------------------------------------------------------------------

variable "webhooks_max_instances" {
  description = "Maximum instances of the webhooks function (bounds the delivery rate)."
  type        = number
  default     = 10
}

variable "webhook_secret_id" {
  description = "Secret Manager secret (id in this project) whose value is SOUL_WEBHOOK_SECRET (whsec_...), used when no tenants are configured. Empty: no secret is mounted."
  type        = string
  default     = ""
}

variable "reconcile_schedule" {
  description = "Cron schedule (UTC) of the reconcile function's Cloud Scheduler job."
  type        = string
  default     = "* * * * *"
}

# ---------------------------------------------------------------------------------------------------------------
# Operations
# ---------------------------------------------------------------------------------------------------------------

variable "alert_notification_channels" {
  description = "Monitoring notification channel ids (projects/P/notificationChannels/N) the alert policies notify. Empty: the policies exist and show incidents in the console, but notify nobody."
  type        = list(string)
  default     = []
}

variable "alert_oldest_unacked_seconds" {
  description = "Alert when the oldest waiting job of a lane is older than this."
  type        = number
  default     = 1800
}

variable "alert_job_failure_ratio" {
  description = "Alert when more than this share of the jobs finished in 15 minutes failed."
  type        = number
  default     = 0.2
}

variable "media_cors_origins" {
  # ["*"]: any page that holds a signed URL may save it (the URL is the credential).
  description = "Origins whose pages may fetch signed media URLs: the api function's URL or a custom domain."
  type        = list(string)
  default     = ["*"]
}
