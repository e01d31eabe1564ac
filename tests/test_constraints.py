"""Every constraint is enforced by the database: raw inserts bypass Python, name the constraint
that fired, and leave nothing written."""

import datetime as dt
import uuid
from decimal import Decimal

import pytest

from within_db.models.analytics import (
    DashboardWidget,
    ReportExport,
    ReportTemplate,
    SavedQuery,
    ShareLink,
    Visualization,
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
    ModelVersion,
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
    UserRole,
)

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
H64 = "a" * 64


def valid(model):
    """Return (model, values) for one valid row of ``model``; parents are created."""
    if model is User:
        return {"email": f"{uuid.uuid4().hex}@example.com"}
    if model is Credential:
        return {"user": make_user(), "password_hash": "$argon2id$x", "algorithm": "argon2id"}
    if model is Role:
        return {"name": f"role-{uuid.uuid4().hex[:8]}"}
    if model is Permission:
        return {"codename": f"campaigns.edit{uuid.uuid4().hex[:6]}"}
    if model is AccessToken:
        return {"user": make_user(), "token_hash": uuid.uuid4().hex * 2, "kind": "session",
                "prefix": "wdb_abc", "created_at": NOW, "expires_at": NOW + dt.timedelta(1)}
    if model is AuditLog:
        return {"action": "login.success", "prev_hash": "0" * 64,
                "row_hash": uuid.uuid4().hex * 2, "created_at": NOW}
    if model is Campaign:
        return {"owner": make_user(), "name": "Spring", "objective": "sales",
                "platform": "meta", "status": "active", "start_date": dt.date(2026, 1, 1),
                "end_date": dt.date(2026, 2, 1), "total_budget_micros": 10, "currency": "EUR"}
    if model is CampaignPlatformSetting:
        return {"campaign": make_campaign(), "platform": "google", "settings": {"bid": 1}}
    if model is Ad:
        return {"campaign": make_campaign(), "name": "Ad", "creative_type": "video",
                "status": "active"}
    if model is AdMetric:
        return {"ad": make_ad(), "date": dt.date(2026, 1, 5), "impressions": 100,
                "clicks": 10, "conversions": 1, "spend_micros": 5}
    if model is CampaignPerformance:
        return {"campaign": make_campaign(), "date": dt.date(2026, 1, 5), "impressions": 100,
                "clicks": 10, "conversions": 1, "spend_micros": 5, "revenue_micros": 9}
    if model is Budget:
        return {"campaign": make_campaign(), "start_date": dt.date(2026, 1, 1),
                "end_date": dt.date(2026, 1, 31), "amount_micros": 100, "currency": "USD"}
    if model is SpendRecord:
        return {"campaign": make_campaign(), "occurred_at": NOW, "amount_micros": 3,
                "currency": "USD", "source": "manual"}
    if model is MLModel:
        return {"name": f"m-{uuid.uuid4().hex[:8]}", "task": "ranking"}
    if model is TrainingJob:
        return {"model": make_model(), "status": "running", "started_at": NOW}
    if model is ModelVersion:
        return {"model": make_model(), "version": 1, "stage": "staging",
                "artifact_uri": "s3://x"}
    if model is PredictionLog:
        return {"model_version": make_version(), "request_id": uuid.uuid4().hex,
                "score": 0.5, "latency_ms": 3.0}
    if model is ModelMetric:
        return {"model_version": make_version(), "name": "auc", "value": 0.8,
                "split": "test", "step": 1}
    if model is FeatureImportance:
        return {"model_version": make_version(), "feature": "ctr_7d", "importance": 0.3,
                "rank": 1}
    if model is Visualization:
        return {"saved_query": make_saved_query(), "name": "v", "chart_type": "line"}
    if model is DashboardWidget:
        return {"dashboard": make_dashboard(), "visualization": make_visualization(),
                "x": 0, "y": 0, "width": 6, "height": 4}
    if model is ReportExport:
        return {"report": make_report(), "format": "csv", "status": "pending"}
    if model is ShareLink:
        return {"resource_type": "dashboard", "resource_id": "1", "token_hash": H64,
                "prefix": "shr_1", "permission": "view", "created_by": make_user(),
                "created_at": NOW, "expires_at": NOW + dt.timedelta(days=1)}
    raise AssertionError(model)


CHECKS = [
    (Credential, {"algorithm": "md5"}, "credentials_algorithm_check"),
    (Credential, {"password_hash": ""}, "credentials_hash_not_empty_check"),
    (Role, {"name": ""}, "roles_name_not_empty_check"),
    (Permission, {"codename": "campaigns"}, "permissions_codename_format_check"),
    (Permission, {"codename": ".edit"}, "permissions_codename_format_check"),
    (AccessToken, {"kind": "cookie"}, "access_tokens_kind_check"),
    (AccessToken, {"token_hash": "abc"}, "access_tokens_hash_length_check"),
    (AccessToken, {"expires_at": NOW - dt.timedelta(1)},
     "access_tokens_expiry_after_creation_check"),
    (AuditLog, {"action": ""}, "audit_logs_action_not_empty_check"),
    (AuditLog, {"prev_hash": "short"}, "audit_logs_hash_length_check"),
    (Campaign, {"objective": "fame"}, "campaigns_objective_check"),
    (Campaign, {"platform": "myspace"}, "campaigns_platform_check"),
    (Campaign, {"status": "running"}, "campaigns_status_check"),
    (Campaign, {"end_date": dt.date(2025, 12, 31)}, "campaigns_dates_check"),
    (Campaign, {"total_budget_micros": -1}, "campaigns_budget_non_negative_check"),
    (Campaign, {"currency": "usd"}, "campaigns_currency_check"),
    (Campaign, {"currency": "US"}, "campaigns_currency_check"),
    (Campaign, {"currency": "U1D"}, "campaigns_currency_check"),
    (Campaign, {"name": ""}, "campaigns_name_not_empty_check"),
    (CampaignPlatformSetting, {"platform": "orkut"}, "campaign_platform_settings_platform_check"),
    (Ad, {"creative_type": "hologram"}, "ads_creative_type_check"),
    (Ad, {"status": "live"}, "ads_status_check"),
    (AdMetric, {"impressions": -1, "clicks": -1, "conversions": -1},
     "ad_metrics_non_negative_check"),
    (AdMetric, {"spend_micros": -1}, "ad_metrics_non_negative_check"),
    (AdMetric, {"clicks": 101}, "ad_metrics_funnel_check"),
    (AdMetric, {"conversions": 11}, "ad_metrics_funnel_check"),
    (CampaignPerformance, {"revenue_micros": -5}, "campaign_performance_non_negative_check"),
    (CampaignPerformance, {"clicks": 101}, "campaign_performance_funnel_check"),
    (CampaignPerformance, {"conversions": 11}, "campaign_performance_funnel_check"),
    (Budget, {"end_date": dt.date(2025, 1, 1)}, "budgets_dates_check"),
    (Budget, {"amount_micros": -1}, "budgets_amount_non_negative_check"),
    (Budget, {"currency": "EU"}, "budgets_currency_check"),
    (SpendRecord, {"amount_micros": -1}, "spend_records_amount_non_negative_check"),
    (SpendRecord, {"currency": "eur"}, "spend_records_currency_check"),
    (SpendRecord, {"source": "guess"}, "spend_records_source_check"),
    (MLModel, {"task": "magic"}, "ml_models_task_check"),
    (MLModel, {"name": ""}, "ml_models_name_not_empty_check"),
    (TrainingJob, {"status": "paused"}, "training_jobs_status_check"),
    (TrainingJob, {"finished_at": NOW - dt.timedelta(hours=1)},
     "training_jobs_finished_after_started_check"),
    (ModelVersion, {"stage": "prod"}, "model_versions_stage_check"),
    (ModelVersion, {"version": 0}, "model_versions_version_positive_check"),
    (PredictionLog, {"latency_ms": -0.5}, "prediction_logs_latency_non_negative_check"),
    (ModelMetric, {"split": "holdout"}, "model_metrics_split_check"),
    (ModelMetric, {"step": -1}, "model_metrics_step_non_negative_check"),
    (FeatureImportance, {"rank": 0}, "feature_importances_rank_positive_check"),
    (Visualization, {"chart_type": "radar"}, "visualizations_chart_type_check"),
    (DashboardWidget, {"x": 8, "width": 6}, "dashboard_widgets_in_grid_check"),
    (DashboardWidget, {"width": 0}, "dashboard_widgets_in_grid_check"),
    (DashboardWidget, {"y": -1}, "dashboard_widgets_in_grid_check"),
    (ReportExport, {"format": "xlsx"}, "report_exports_format_check"),
    (ReportExport, {"status": "done"}, "report_exports_status_check"),
    (ReportExport, {"row_count": -1}, "report_exports_row_count_non_negative_check"),
    (ShareLink, {"resource_type": "user"}, "share_links_resource_type_check"),
    (ShareLink, {"permission": "admin"}, "share_links_permission_check"),
    (ShareLink, {"token_hash": "x"}, "share_links_hash_length_check"),
    (ShareLink, {"expires_at": NOW}, "share_links_expiry_after_creation_check"),
]


def _id(case):
    return case[2] + "-" + "-".join(map(str, case[1].values()))


@pytest.mark.parametrize("case", CHECKS, ids=[_id(c) for c in CHECKS])
def test_check_constraint_is_enforced_by_the_database(db, case):
    model, bad, name = case
    values = valid(model)
    model.insert(**values).execute()  # the valid row is accepted
    before = model.select().count()
    values = valid(model)
    values.update(bad)
    with raises_violation(db, "check", name):
        model.insert(**values).execute()
    assert model.select().count() == before


def test_email_check_rejects_unnormalised_text_written_as_raw_sql(db):
    # EmailField normalises every write, so only raw SQL can try to store such an email.
    p = db.param
    sql = ("INSERT INTO users (id, email, full_name, is_active, is_superuser, created_at, "
           f"updated_at) VALUES ({p}, {p}, '', TRUE, FALSE, {p}, {p})")
    stamp = "2026-01-01 00:00:00.000000+00:00"
    for email in ("Upper@Example.com", "no-at-sign", "@example.com", "me@"):
        with raises_violation(db, "check", "users_email_normalised_check"):
            db.execute_sql(sql, (uuid.uuid4().hex, email, stamp, stamp))
    assert User.select().count() == 0


UNIQUES = [
    (User, lambda v: {"email": v["email"].upper()}, "users_email"),
    (Credential, lambda v: {"user": v["user"], "password_hash": "other"}, "credentials_user_id"),
    (Role, lambda v: {"name": v["name"]}, "roles_name"),
    (Permission, lambda v: {"codename": v["codename"]}, "permissions_codename"),
    (AccessToken, lambda v: {"token_hash": v["token_hash"]}, "access_tokens_token_hash"),
    (AuditLog, lambda v: {"row_hash": v["row_hash"]}, "audit_logs_row_hash"),
    (CampaignPlatformSetting, lambda v: {"campaign": v["campaign"]},
     "campaign_platform_settings_campaign_id_platform"),
    (AdMetric, lambda v: {"ad": v["ad"]}, "ad_metrics_ad_id_date"),
    (CampaignPerformance, lambda v: {"campaign": v["campaign"]},
     "campaign_performance_campaign_id_date"),
    (MLModel, lambda v: {"name": v["name"]}, "ml_models_name"),
    (ModelVersion, lambda v: {"model": v["model"], "stage": "none"},
     "model_versions_model_id_version"),
    (PredictionLog, lambda v: {"request_id": v["request_id"]}, "prediction_logs_request_id"),
    (FeatureImportance, lambda v: {"model_version": v["model_version"], "rank": 2},
     "feature_importances_model_version_id_feature"),
    (FeatureImportance, lambda v: {"model_version": v["model_version"], "feature": "other"},
     "feature_importances_model_version_id_rank"),
    (ShareLink, lambda v: {"token_hash": v["token_hash"]}, "share_links_token_hash"),
]


@pytest.mark.parametrize("case", UNIQUES, ids=[c[2] for c in UNIQUES])
def test_unique_constraint_is_enforced_by_the_database(db, case):
    model, clash, name = case
    first = valid(model)
    model.insert(**first).execute()
    before = model.select().count()
    second = valid(model)
    second.update(clash(first))
    with raises_violation(db, "unique", name):
        model.insert(**second).execute()
    assert model.select().count() == before


def test_unique_pairs_in_link_tables(db):
    user, role = make_user(), Role.create(name="analyst")
    perm = Permission.create(codename="campaigns.view")
    RolePermission.create(role=role, permission=perm)
    UserRole.create(user=user, role=role)
    with raises_violation(db, "unique", "role_permissions_role_id_permission_id"):
        RolePermission.insert(role=role, permission=perm).execute()
    with raises_violation(db, "unique", "user_roles_user_id_role_id"):
        UserRole.insert(user=user, role=role).execute()
    owner = make_user()
    SavedQuery.create(owner=owner, name="Weekly", definition={})
    with raises_violation(db, "unique", "saved_queries_owner_id_name"):
        SavedQuery.insert(owner=owner, name="Weekly", definition={}).execute()
    make_dashboard(owner=owner, name="Main")
    with raises_violation(db, "unique", "dashboards_owner_id_name"):
        make_dashboard(owner=owner, name="Main")
    ReportTemplate.create(name="Weekly")
    with raises_violation(db, "unique", "report_templates_name"):
        ReportTemplate.insert(name="Weekly").execute()


def test_one_production_version_per_model(db):
    model = make_model()
    make_version(model, stage="production")
    make_version(model, stage="staging")
    with raises_violation(db, "unique", "model_versions_one_production"):
        make_version(model, stage="production")
    # other models and other stages are unaffected
    make_version(make_model(), stage="production")
    make_version(model, stage="archived")
    make_version(model, stage="archived")
    assert ModelVersion.select().where(ModelVersion.model == model).count() == 4


@pytest.mark.parametrize("model,column", [
    (User, "email"), (Campaign, "name"), (Campaign, "start_date"), (Ad, "campaign"),
    (AdMetric, "date"), (ModelVersion, "artifact_uri"), (PredictionLog, "score"),
    (SavedQuery, "definition"), (ShareLink, "expires_at"), (AccessToken, "expires_at"),
])
def test_not_null_is_enforced_by_the_database(db, model, column):
    values = valid(model) if model is not SavedQuery else {
        "owner": make_user(), "name": "q", "definition": {}}
    values[column] = None
    field = model._meta.fields[column]
    with raises_violation(db, "not_null",
                          f"{model._meta.table_name}_{field.column_name}_not_null"):
        model.insert(**values).execute()
    assert model.select().count() == 0


def test_foreign_keys_are_enforced_by_the_database(db):
    values = valid(Campaign)
    values["owner"] = uuid.uuid4()
    with raises_violation(db, "foreign_key", "campaigns_owner_id_fkey"):
        Campaign.insert(**values).execute()
    values = valid(Ad)
    values["campaign"] = uuid.uuid4()
    with raises_violation(db, "foreign_key", "ads_campaign_id_fkey"):
        Ad.insert(**values).execute()
    assert Ad.select().count() == 0


def test_money_is_accepted_as_decimal_in_constraints(db):
    values = valid(Budget)
    values["amount_micros"] = Decimal("0.000001")
    Budget.insert(**values).execute()
    assert Budget.get().amount_micros == Decimal("0.000001")
