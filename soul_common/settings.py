"""Configuration of the `reconcile` function (its own deployable): one settings object, read from the environment
once, on the first call, and passed down. The runner keeps its reconciler knobs in `RunnerSettings`."""

from __future__ import annotations

from datetime import timedelta

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from soul_common import retention
from soul_common.reconciler import ReconcilePolicy, redelivery_window


class ReconcileSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SOUL_", extra="ignore", frozen=True)

    project_id: str = Field(
        default="soul-local", validation_alias=AliasChoices("GCS_PROJECT_ID", "GOOGLE_CLOUD_PROJECT")
    )
    log_level: str = Field(default="INFO", validation_alias=AliasChoices("LOG_LEVEL"))
    unpublished_after_seconds: float = Field(default=30.0, ge=0.0)
    # Default: the runner subscription's ack deadline x max delivery attempts + the backoffs between them.
    requeue_queued_after_seconds: float = Field(default=redelivery_window().total_seconds(), ge=1.0)
    # A message no runner has taken yet is presumed lost after this long in the backlog.
    reconcile_undelivered_after_seconds: float = Field(default=3600.0, ge=1.0)
    reconcile_max_attempts: int = Field(default=5, ge=1)
    reconcile_max_republishes: int = Field(default=10, ge=1)
    # The deployment-wide pass lease (shared with the runners): no pass starts sooner than this after the last
    # one ended, whoever ran it (a little under the scheduler's minute).
    reconcile_min_interval_seconds: float = Field(default=55.0, ge=0.0)
    reconcile_page_size: int = Field(default=300, ge=1, le=1000)
    reconcile_max_pages: int = Field(default=20, ge=1)
    job_retention_days: float = Field(default=retention.JOB_RETENTION.days, gt=0)

    def policy(self) -> ReconcilePolicy:
        return ReconcilePolicy(
            unpublished_after=timedelta(seconds=self.unpublished_after_seconds),
            requeue_queued_after=timedelta(seconds=self.requeue_queued_after_seconds),
            undelivered_after=timedelta(seconds=self.reconcile_undelivered_after_seconds),
            max_attempts=self.reconcile_max_attempts,
            max_republishes=self.reconcile_max_republishes,
            page_size=self.reconcile_page_size,
            max_pages=self.reconcile_max_pages,
            job_retention=timedelta(days=self.job_retention_days),
        )
