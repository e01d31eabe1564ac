import peewee
import pytest

import within_db
from within_db.base import jsonable
from within_db.db import database
from within_db.models import ALL_MODELS
from within_db.models.analytics import SavedQuery
from within_db.models.campaigns import AdMetric, Budget, Campaign, CampaignPerformance
from within_db.models.ml_system import ModelVersion, PredictionLog, TrainingJob
from within_db.models.users import Credential
from within_db.seed import SCALES, run_seed
from within_db.seed import campaigns as seed_campaigns_module
from within_db.services.analytics import run_saved_query
from within_db.services.audit import verify_audit_chain

from .conftest import Databases

# values derived from secrets (hashes, token prefixes) may differ between runs
SECRET_DERIVED = {"password_hash", "token_hash", "prefix", "row_hash", "prev_hash"}


def dump(db) -> dict:
    out = {}
    database.initialize(db)
    with db.connection_context():
        for model in ALL_MODELS:
            pk = model._meta.primary_key
            rows = model.select().order_by(pk).dicts()
            out[model._meta.table_name] = [
                {k: v for k, v in jsonable(row).items() if k not in SECRET_DERIVED}
                for row in rows]
    return out


def test_same_seed_same_data(fresh_url, databases):
    first = within_db.connect(fresh_url)
    run_seed(first, "tiny", seed=7)
    second = within_db.connect(databases.new_url())
    run_seed(second, "tiny", seed=7)
    assert dump(first) == dump(second)
    third = within_db.connect(databases.new_url())
    run_seed(third, "tiny", seed=8)
    assert dump(third)["users"] != dump(first)["users"]
    database.initialize(None)


def test_sqlite_and_postgres_hold_identical_rows(tmp_path_factory, postgres_available):
    sqlite = within_db.connect(f"sqlite:///{tmp_path_factory.mktemp('x') / 'a.db'}")
    run_seed(sqlite, "tiny")
    left = dump(sqlite)
    pg_dbs = Databases("postgres", tmp_path_factory)
    try:
        pg = within_db.connect(pg_dbs.new_url())
        run_seed(pg, "tiny")
        right = dump(pg)
        pg.close()
    finally:
        pg_dbs.drop_all()
        database.initialize(None)
    assert left.keys() == right.keys()
    for table in left:
        assert left[table] == right[table], table


def test_seeded_data_is_coherent_and_complete(migrated_fresh_db):
    run_seed(migrated_fresh_db, "tiny")
    with migrated_fresh_db.connection_context():
        for model in ALL_MODELS:
            assert model.select().exists(), model._meta.table_name
        assert Credential.select().where(
            ~Credential.password_hash.startswith("$argon2id$")).count() == 0
        for campaign in Campaign.select():
            perf = list(CampaignPerformance.select().where(
                CampaignPerformance.campaign == campaign.id))
            assert all(campaign.start_date <= p.date <= campaign.end_date for p in perf)
            spend = sum(p.spend_micros for p in perf)
            budget = sum(b.amount_micros for b in Budget.select().where(
                Budget.campaign == campaign.id))
            assert spend <= budget <= campaign.total_budget_micros
            for p in perf:
                ads = (AdMetric.select(peewee.fn.SUM(AdMetric.clicks))
                       .join(AdMetric.ad.rel_model)
                       .where(AdMetric.date == p.date,
                              AdMetric.ad.rel_model.campaign == campaign.id).scalar())
                assert ads == p.clicks
        assert {j.status for j in TrainingJob.select()} == {
            "queued", "running", "succeeded", "failed", "cancelled"}
        production = (ModelVersion.select(ModelVersion.model, peewee.fn.COUNT(ModelVersion.id))
                      .where(ModelVersion.stage == "production").group_by(ModelVersion.model)
                      .tuples())
        assert production and all(n == 1 for _, n in production)
        assert PredictionLog.select().count() == SCALES["tiny"].predictions
        for query in SavedQuery.select():
            assert isinstance(run_saved_query(query), list)
        assert verify_audit_chain().ok


def test_an_interrupted_seed_leaves_the_database_as_before(migrated_fresh_db, monkeypatch):
    real = seed_campaigns_module.bulk_insert
    calls = []

    def failing(model, rows, **kw):
        calls.append(model)
        if model is AdMetric:
            raise RuntimeError("injected failure")
        return real(model, rows, **kw)

    monkeypatch.setattr(seed_campaigns_module, "bulk_insert", failing)
    before = dump(migrated_fresh_db)
    with pytest.raises(RuntimeError, match="injected"):
        run_seed(migrated_fresh_db, "tiny")
    assert Campaign in calls  # it failed half way through
    assert dump(migrated_fresh_db) == before


def test_scales_are_documented_sizes():
    assert SCALES["large"].predictions >= 1_000_000
    sizes = [SCALES[s].users for s in ("tiny", "small", "medium", "large")]
    assert sizes == sorted(sizes)



def test_readme_scale_table_uses_the_count_names_and_values():
    import dataclasses
    from pathlib import Path

    from within_db.seed import Scale

    text = (Path(__file__).parent.parent / "README.md").read_text()
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    header = next(line for line in lines if line.startswith("| scale |"))
    names = [c.strip() for c in header.strip("|").split("|")][1:]
    assert names == [f.name for f in dataclasses.fields(Scale)]
    for name, scale in SCALES.items():
        row = next(line for line in lines if line.startswith(f"| {name} "))
        values = [int(c.strip().replace(",", "")) for c in row.strip("|").split("|")[1:]]
        assert values == list(dataclasses.astuple(scale)), name
