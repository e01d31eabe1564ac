import datetime as dt
import json
import uuid
from decimal import Decimal
from pathlib import Path

import pytest
from playhouse.test_utils import count_queries

from within_db.models import ALL_MODELS
from within_db.models.analytics import (
    DashboardWidget,
    Report,
    ReportExport,
    ReportTemplate,
    ScheduledReport,
    ShareLink,
)
from within_db.models.campaigns import (
    Ad,
    AdMetric,
    Budget,
    Campaign,
    CampaignPerformance,
    CampaignPlatformSetting,
    SpendRecord,
)
from within_db.models.ml_system import (
    FeatureImportance,
    MLModel,
    ModelMetric,
    PredictionLog,
    TrainingJob,
)
from within_db.models.users import (
    AccessToken,
    AuditLog,
    Credential,
    Permission,
    Role,
    RolePermission,
    User,
    UserProfile,
    UserRole,
)
from within_db.schema.erd import schema_markdown

from .helpers import (
    make_ad,
    make_campaign,
    make_dashboard,
    make_model,
    make_report,
    make_saved_query,
    make_user,
    make_version,
    make_visualization,
    raises_violation,
)

UTC = dt.UTC
NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def test_all_models_are_in_dependency_order_with_explicit_snake_case_tables():
    seen = set()
    for model in ALL_MODELS:
        for fk in model._meta.refs:
            assert fk.rel_model in seen or fk.rel_model is model, (model, fk)
        seen.add(model)
        name = model._meta.table_name
        assert name == name.lower() and "user" != name
    assert len(ALL_MODELS) == 31
    assert len({m._meta.table_name for m in ALL_MODELS}) == 31


def test_check_helper_refuses_expressions_sqlite_rebuilds_cannot_parse():
    from within_db.base import check

    with pytest.raises(ValueError, match="cannot split"):
        check("users", "bad", "substr(email, length(email), 1) <> '@'")
    assert check("users", "fine", "rtrim(email, '@') = email")


def test_every_foreign_key_states_on_delete():
    for model in ALL_MODELS:
        for fk in model._meta.refs:
            assert fk.on_delete in ("CASCADE", "RESTRICT", "SET NULL"), (model, fk.name)


def test_round_trip_of_every_field_type(db):
    awkward = "tab\there\nnewline \\ backslash 'quote' \"dq\" é ✓ 🚀"
    owner = make_user(full_name=awkward, last_login_at=NOW)
    campaign = make_campaign(owner=owner, name=awkward,
                             total_budget_micros=Decimal("987654321.123456"),
                             metadata={"nested": {"list": [1, 2.5, None, "x"]}, "ok": True})
    got = Campaign.get_by_id(campaign.id)
    assert got.name == awkward
    assert isinstance(got.id, uuid.UUID) and got.id == campaign.id
    assert got.total_budget_micros == Decimal("987654321.123456")
    assert got.metadata == {"nested": {"list": [1, 2.5, None, "x"]}, "ok": True}
    assert got.start_date == dt.date(2026, 1, 1)
    assert User.get_by_id(owner.id).last_login_at == NOW
    assert User.get_by_id(owner.id).is_active is True
    version = make_version()
    log = PredictionLog.create(model_version=version, request_id="r1", score=0.123456789,
                               features={"ctr": 0.1}, latency_ms=None)
    got = PredictionLog.get_by_id(log.id)
    assert got.score == 0.123456789 and got.latency_ms is None and got.features == {"ctr": 0.1}
    assert isinstance(got.id, int)


def test_deleting_a_campaign_cascades_to_everything_it_owns(db):
    campaign = make_campaign()
    ad = make_ad(campaign)
    AdMetric.create(ad=ad, date=dt.date(2026, 1, 2), impressions=10, clicks=1)
    CampaignPerformance.create(campaign=campaign, date=dt.date(2026, 1, 2))
    CampaignPlatformSetting.create(campaign=campaign, platform="google")
    Budget.create(campaign=campaign, start_date=dt.date(2026, 1, 1),
                  end_date=dt.date(2026, 1, 31), amount_micros=5)
    SpendRecord.create(campaign=campaign, occurred_at=NOW, amount_micros=1)
    campaign.delete_instance()
    for model in (Ad, AdMetric, CampaignPerformance, CampaignPlatformSetting, Budget,
                  SpendRecord):
        assert model.select().count() == 0, model


def test_a_user_with_campaigns_cannot_be_deleted(db):
    campaign = make_campaign()
    with raises_violation(db, "foreign_key", "campaigns_owner_id_fkey"):
        User.delete().where(User.id == campaign.owner_id).execute()
    assert Campaign.select().count() == 1


def test_deleting_a_user_cascades_to_profile_credentials_roles_and_tokens(db):
    user = make_user()
    UserProfile.create(user=user)
    Credential.create(user=user, password_hash="h")
    UserRole.create(user=user, role=Role.create(name="r"))
    AccessToken.create(user=user, token_hash="b" * 64, kind="api_key", prefix="p",
                       expires_at=dt.datetime.now(UTC) + dt.timedelta(1))
    model = make_model(owner=user)
    user.delete_instance()
    for m in (UserProfile, Credential, UserRole, AccessToken):
        assert m.select().count() == 0, m
    assert MLModel.get_by_id(model.id).owner_id is None  # the registry survives its owner


def test_audit_rows_keep_their_actor(db):
    user = make_user()
    AuditLog.create(actor=user, action="login", prev_hash="0" * 64, row_hash="1" * 64)
    with raises_violation(db, "foreign_key", "audit_logs_actor_id_fkey"):
        User.delete().where(User.id == user.id).execute()


def test_predictions_keep_their_version_and_lose_their_ad(db):
    version = make_version()
    ad = make_ad()
    PredictionLog.create(model_version=version, request_id="q", score=1.0, ad=ad)
    with raises_violation(db, "foreign_key", "prediction_logs_model_version_id_fkey"):
        type(version).delete().where(type(version).id == version.id).execute()
    ad.delete_instance()
    assert PredictionLog.get().ad_id is None


def test_deleting_a_model_cascades_to_versions_jobs_and_metrics(db):
    model = make_model()
    job = TrainingJob.create(model=model)
    version = make_version(model, training_job=job)
    ModelMetric.create(model_version=version, name="auc", value=0.9)
    FeatureImportance.create(model_version=version, feature="f", importance=1.0, rank=1)
    job.delete_instance()
    assert type(version).get_by_id(version.id).training_job_id is None
    model.delete_instance(recursive=False)
    for m in (TrainingJob, type(version), ModelMetric, FeatureImportance):
        assert m.select().count() == 0, m


def test_analytics_deletes(db):
    owner = make_user()
    query = make_saved_query(owner=owner)
    viz = make_visualization(query)
    board = make_dashboard(owner=owner)
    DashboardWidget.create(dashboard=board, visualization=viz, x=0, y=0, width=4, height=3)
    template = ReportTemplate.create(name="Weekly")
    report = make_report(owner=owner, saved_query=query, template=template)
    ScheduledReport.create(report=report, cron_expression="0 9 * * *")
    ReportExport.create(report=report, format="csv")
    viz.delete_instance()
    assert DashboardWidget.select().count() == 0
    template.delete_instance()
    query.delete_instance()
    report = Report.get_by_id(report.id)
    assert report.template_id is None and report.saved_query_id is None
    report.delete_instance()
    assert ScheduledReport.select().count() == 0 and ReportExport.select().count() == 0


def test_to_dict_of_every_model_is_flat_json_and_secret_free(db):
    user = make_user()
    role = Role.create(name="admin")
    perm = Permission.create(codename="campaigns.edit")
    campaign = make_campaign(owner=user)
    ad = make_ad(campaign)
    model = make_model(owner=user)
    job = TrainingJob.create(model=model)
    version = make_version(model, training_job=job)
    query = make_saved_query(owner=user)
    viz = make_visualization(query)
    board = make_dashboard(owner=user)
    template = ReportTemplate.create(name="T")
    report = make_report(owner=user, template=template)
    rows = [
        user, UserProfile.create(user=user), Credential.create(user=user, password_hash="SECRET"),
        role, perm, RolePermission.create(role=role, permission=perm),
        UserRole.create(user=user, role=role),
        AccessToken.create(user=user, token_hash="c" * 64, kind="session", prefix="wdb",
                           expires_at=dt.datetime.now(UTC) + dt.timedelta(1)),
        AuditLog.create(actor=user, action="x", prev_hash="0" * 64, row_hash="d" * 64),
        campaign, CampaignPlatformSetting.create(campaign=campaign, platform="meta"), ad,
        AdMetric.create(ad=ad, date=dt.date(2026, 1, 1)),
        CampaignPerformance.create(campaign=campaign, date=dt.date(2026, 1, 1)),
        Budget.create(campaign=campaign, start_date=dt.date(2026, 1, 1),
                      end_date=dt.date(2026, 1, 2), amount_micros=Decimal("1.5")),
        SpendRecord.create(campaign=campaign, occurred_at=NOW, amount_micros=1),
        model, job, version,
        PredictionLog.create(model_version=version, request_id="r", score=0.1),
        ModelMetric.create(model_version=version, name="auc", value=0.5),
        FeatureImportance.create(model_version=version, feature="f", importance=1, rank=1),
        template, query, report, viz,
        ScheduledReport.create(report=report, cron_expression="0 * * * *"), board,
        DashboardWidget.create(dashboard=board, visualization=viz, x=0, y=0, width=1, height=1),
        ReportExport.create(report=report, format="jsonl"),
        ShareLink.create(resource_type="dashboard", resource_id=str(board.id),
                         token_hash="e" * 64, prefix="shr", created_by=user,
                         expires_at=dt.datetime.now(UTC) + dt.timedelta(1)),
    ]
    assert {type(r) for r in rows} == set(ALL_MODELS)
    for row in rows:
        data = row.to_dict()
        text = json.dumps(data)
        assert all(not isinstance(v, dict) or k in (
            "preferences", "metadata", "settings", "parameters", "dataset_spec",
            "hyperparameters", "features", "definition", "options", "layout")
            for k, v in data.items()), type(row)
        for secret in ("SECRET", "c" * 64, "e" * 64):
            assert secret not in text and secret not in repr(row)
    assert campaign.to_dict()["owner_id"] == str(user.id)
    assert campaign.to_dict()["total_budget_micros"] == "1000.5"


def _get_user_campaigns_from_the_design(user_id):
    """The original design's usage example, adapted to within_db."""
    from within_db.db import get_db
    from within_db.models.campaigns import Ad, Campaign
    from within_db.models.users import User

    db = next(get_db())
    assert db is not None
    user = User.select().where(User.id == user_id).first()
    if not user:
        return None
    campaigns = (Campaign.select().where(Campaign.owner == user.id)
                 .order_by(Campaign.created_at.desc()))
    result = []
    for campaign in campaigns:
        ads = Ad.select().where(Ad.campaign == campaign.id).order_by(Ad.created_at, Ad.id)
        result.append({"campaign": campaign.to_dict(), "ads": [ad.to_dict() for ad in ads]})
    return result


def test_design_usage_example_and_the_service_agree(db):
    from within_db.services.campaigns import get_user_campaigns

    user = make_user()
    for i in range(3):
        campaign = make_campaign(owner=user, created_at=NOW + dt.timedelta(days=i))
        for _ in range(i + 1):
            make_ad(campaign)
    make_campaign()  # someone else's
    expected = _get_user_campaigns_from_the_design(user.id)
    assert [len(r["ads"]) for r in expected] == [3, 2, 1]  # newest first
    with count_queries() as counter:
        got = get_user_campaigns(str(user.id))
    assert got == expected
    assert counter.count == 3
    assert get_user_campaigns(uuid.uuid4()) is None
    assert get_user_campaigns(make_user().id) == []


def test_schema_doc_matches_the_models():
    path = Path(__file__).resolve().parent.parent / "docs" / "schema.md"
    assert path.read_text() == schema_markdown(ALL_MODELS), \
        "docs/schema.md is stale: run `within-db inspect erd --markdown > docs/schema.md`"
    assert path.read_text().count(" {\n") == len(ALL_MODELS)
