"""Firestore's index rules (soul_common/indexes.py) on the shapes the gateway records, and the declarations in
infra/terraform/firestore.tf read the way the suite-wide coverage check (tests/index_coverage.py) reads them."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.api_core import exceptions as gexc

from soul_common import firestore as fs
from soul_common import indexes
from soul_common.indexes import Declared, FieldConfig, Index

TF = Path(__file__).resolve().parents[2] / "infra" / "terraform" / "firestore.tf"
NOTHING = Declared(indexes=(), fields=())


def covered(query_or_shape, declared: Declared) -> bool:
    shape = query_or_shape.shape() if isinstance(query_or_shape, fs.Query) else query_or_shape
    return not indexes.uncovered([shape], declared)


def test_single_field_indexes_serve_simple_queries():
    jobs = fs.collection("jobs")
    assert covered(jobs, NOTHING)
    assert covered(jobs.where("status", "==", "queued"), NOTHING)
    assert covered(jobs.where("status", "==", "queued").where("type", "==", "image"), NOTHING)  # merged
    assert covered(jobs.where("status", "==", "queued").order_by("__name__"), NOTHING)
    assert covered(jobs.where("at", ">=", 1).order_by("at", descending=True), NOTHING)
    assert covered(jobs.where("tenants", "array_contains", "t"), NOTHING)
    assert covered(jobs.shape(aggregate=("sum", "metrics.gpu_seconds")), NOTHING)


def test_equality_plus_range_order_or_sum_on_another_field_needs_a_composite_index():
    jobs = fs.collection("jobs")
    quota = jobs.where("tenant", "==", "t").where("finished_at", ">=", 0)
    assert not covered(quota, NOTHING)
    assert not covered(jobs.where("status", "==", "s").order_by("finished_at"), NOTHING)
    assert not covered(jobs.where("tenants", "array_contains", "t").order_by("created_at"), NOTHING)
    assert not covered(jobs.where("type", "==", "image").shape(aggregate=("sum", "metrics.gpu_seconds")), NOTHING)
    index = Index("q", "jobs", False, (("tenant", "ASCENDING"), ("finished_at", "ASCENDING"),
                                       ("metrics.gpu_seconds", "ASCENDING")))
    declared = Declared(indexes=(index,), fields=())
    assert covered(quota.shape(aggregate=("sum", "metrics.gpu_seconds")), declared)
    # the index without the summed field serves the filter but not the sum
    short = Declared(indexes=(Index("q", "jobs", False, index.fields[:2]),), fields=())
    assert covered(quota, short) and not covered(quota.shape(aggregate=("sum", "metrics.gpu_seconds")), short)


def test_directions_match_or_are_all_reversed_and_the_scope_and_collection_count():
    page = fs.collection("jobs").where("tenants", "array_contains", "t").order_by("created_at", descending=True)
    desc = Index("d", "jobs", False, (("tenants", "CONTAINS"), ("created_at", "DESCENDING"), ("__name__", "DESCENDING")))
    asc = Index("a", "jobs", False, (("tenants", "CONTAINS"), ("created_at", "ASCENDING")))
    assert covered(page, Declared((desc,), ())) and covered(page, Declared((asc,), ()))
    two = fs.collection("jobs").order_by("a").order_by("b", descending=True)
    assert not covered(two, Declared((Index("x", "jobs", False, (("a", "ASCENDING"), ("b", "ASCENDING"))),), ()))
    assert covered(two, Declared((Index("x", "jobs", False, (("a", "DESCENDING"), ("b", "ASCENDING"))),), ()))
    assert not covered(page, Declared((Index("d", "variants", False, desc.fields),), ()))
    assert not covered(page, Declared((Index("d", "jobs", True, desc.fields),), ()))


def test_composite_indexes_merge_over_equality_fields():
    page = (fs.collection("jobs").where("status", "==", "q").where("type", "==", "image")
            .where("tenants", "array_contains", "t").order_by("created_at", descending=True))
    rest = (("tenants", "CONTAINS"), ("created_at", "DESCENDING"))
    status = Index("s", "jobs", False, (("status", "ASCENDING"), *rest))
    kind = Index("k", "jobs", False, (("type", "ASCENDING"), *rest))
    assert not covered(page, Declared((status,), ()))
    assert covered(page, Declared((status, kind), ()))
    assert indexes.serving(indexes.need(page.shape()), Declared((status, kind), ())) == [status, kind]


def test_exemptions_remove_the_automatic_indexes_and_groups_need_declared_ones():
    exempt = Declared((), (FieldConfig("x", "jobs", "updated_at", frozenset(), False),))
    assert not covered(fs.collection("jobs").where("updated_at", "<", 1), exempt)
    assert covered(fs.collection("variants").where("updated_at", "<", 1), exempt)  # another collection
    group = fs.collection_group("prerenders")
    assert covered(group, NOTHING)  # the document-name index
    assert not covered(group.where("delivered", "==", True), NOTHING)
    scoped = Declared((), (FieldConfig("p", "prerenders", "delivered",
                                       frozenset({("ASCENDING", "COLLECTION_GROUP")}), False),))
    assert covered(group.where("delivered", "==", True), scoped)


def test_the_deployed_declarations_parse_and_serve_the_queries_named_in_them():
    declared = indexes.from_terraform(TF.read_text())
    assert declared.indexes and len({i.name for i in declared.indexes}) == len(declared.indexes)
    page = (fs.collection_group("interest").where("tenant", "==", "acme").where("user_key", "==", "acme~u")
            .where("soul_id", "==", "nova").order_by("created_at", descending=True)
            .order_by("__name__", descending=True))
    assert covered(page, declared)  # GET /tasks?user_id=&soul_id=
    # listings left the job documents' arrays (issue 17): their indexes are gone with them
    old = (fs.collection("jobs").where("requester_keys", "array_contains", "k")
           .order_by("created_at", descending=True).order_by("__name__", descending=True))
    assert not covered(old, declared)
    assert not covered(fs.collection("jobs").where("requested_by", "==", "u").order_by("created_at"), declared)
    # the exempted timestamps are not queried alone
    assert not covered(fs.collection("jobs").order_by("updated_at"), declared)
    assert declared.ttl_fields()["idempotency"] == "expires_at"


def test_the_terraform_reader_rejects_what_it_cannot_read():
    with pytest.raises(ValueError):
        indexes.terraform_local('locals { firestore_indexes = { a = var.x } }', "firestore_indexes")
    with pytest.raises(KeyError):
        indexes.terraform_local("locals {}", "firestore_indexes")


def test_a_query_refused_for_want_of_an_index_is_reported_with_its_shape():
    shape = fs.collection("jobs").where("tenant", "==", "t").shape()
    with pytest.raises(indexes.IndexMissing) as caught:
        with fs._needs_index(shape):
            raise gexc.FailedPrecondition("The query requires an index.")
    assert caught.value.shape == shape and "requires an index" in caught.value.reason
