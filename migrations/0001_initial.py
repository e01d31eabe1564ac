"""Create the whole within_db schema: users, campaigns, ml_system and analytics."""
from peewee import *


class TimestampTZField(Field):
    field_type = 'TIMESTAMPTZ'


def up(migrator, db):
    class User(Model):
        id = UUIDField(primary_key=True)
        created_at = TimestampTZField()
        updated_at = TimestampTZField()
        email = CharField(unique=True, max_length=254)
        full_name = CharField(max_length=200)
        is_active = BooleanField()
        is_superuser = BooleanField()
        last_login_at = TimestampTZField(null=True)

        class Meta:
            database = db
            legacy_table_names = False
            table_name = 'users'
            constraints = [
                Check("email = lower(trim(email)) AND replace(email, '@', '') <> email AND ltrim(email, '@') = email AND rtrim(email, '@') = email", name='users_email_normalised_check'),
            ]


    class AccessToken(Model):
        user = ForeignKeyField(User, on_delete='CASCADE')
        token_hash = CharField(unique=True, max_length=64)
        kind = CharField(max_length=16)
        prefix = CharField(max_length=16)
        name = CharField(max_length=100)
        created_at = TimestampTZField()
        expires_at = TimestampTZField()
        revoked_at = TimestampTZField(null=True)
        last_used_at = TimestampTZField(null=True)

        class Meta:
            database = db
            legacy_table_names = False
            table_name = 'access_tokens'
            constraints = [
                Check("kind IN ('session', 'api_key')", name='access_tokens_kind_check'),
                Check('length(token_hash) = 64', name='access_tokens_hash_length_check'),
                Check('expires_at > created_at', name='access_tokens_expiry_after_creation_check'),
            ]


    class Campaign(Model):
        id = UUIDField(primary_key=True)
        created_at = TimestampTZField()
        updated_at = TimestampTZField()
        owner = ForeignKeyField(User, on_delete='RESTRICT', index=False)
        name = CharField(max_length=200)
        objective = CharField(max_length=32)
        platform = CharField(max_length=32)
        status = CharField(max_length=16)
        start_date = DateField()
        end_date = DateField(null=True)
        total_budget_micros = BigIntegerField()
        currency = CharField(max_length=3)
        metadata = JSONField()

        class Meta:
            database = db
            legacy_table_names = False
            table_name = 'campaigns'
            indexes = (
                (('owner', 'created_at'), False),
            )
            constraints = [
                Check("objective IN ('awareness', 'traffic', 'engagement', 'leads', 'app_installs', 'sales')", name='campaigns_objective_check'),
                Check("platform IN ('google', 'meta', 'tiktok', 'linkedin', 'microsoft', 'snapchat', 'pinterest')", name='campaigns_platform_check'),
                Check("status IN ('draft', 'active', 'paused', 'completed', 'archived')", name='campaigns_status_check'),
                Check('end_date IS NULL OR end_date >= start_date', name='campaigns_dates_check'),
                Check('total_budget_micros >= 0', name='campaigns_budget_non_negative_check'),
                Check("length(currency) = 3 AND currency = upper(currency) AND substr(currency, 1, 1) BETWEEN 'A' AND 'Z' AND substr(currency, 2, 1) BETWEEN 'A' AND 'Z' AND substr(currency, 3, 1) BETWEEN 'A' AND 'Z'", name='campaigns_currency_check'),
                Check('length(name) > 0', name='campaigns_name_not_empty_check'),
            ]


    class Ad(Model):
        id = UUIDField(primary_key=True)
        created_at = TimestampTZField()
        updated_at = TimestampTZField()
        campaign = ForeignKeyField(Campaign, on_delete='CASCADE')
        name = CharField(max_length=200)
        headline = CharField(max_length=300)
        body = TextField()
        call_to_action = CharField(max_length=64)
        creative_type = CharField(max_length=16)
        media_url = CharField(null=True, max_length=2048)
        status = CharField(max_length=16)

        class Meta:
            database = db
            legacy_table_names = False
            table_name = 'ads'
            constraints = [
                Check("creative_type IN ('image', 'video', 'carousel', 'text', 'html5')", name='ads_creative_type_check'),
                Check("status IN ('draft', 'active', 'paused', 'archived')", name='ads_status_check'),
            ]


    class AdMetric(Model):
        ad = ForeignKeyField(Ad, on_delete='CASCADE', index=False)
        date = DateField()
        impressions = BigIntegerField()
        clicks = BigIntegerField()
        conversions = BigIntegerField()
        spend_micros = BigIntegerField()

        class Meta:
            database = db
            legacy_table_names = False
            table_name = 'ad_metrics'
            indexes = (
                (('ad', 'date'), True),
            )
            constraints = [
                Check('impressions >= 0 AND clicks >= 0 AND conversions >= 0 AND spend_micros >= 0', name='ad_metrics_non_negative_check'),
                Check('clicks <= impressions AND conversions <= clicks', name='ad_metrics_funnel_check'),
            ]


    class AuditLog(Model):
        id = BigAutoField()
        actor = ForeignKeyField(User, on_delete='RESTRICT', null=True)
        action = CharField(max_length=64)
        target_type = CharField(null=True, max_length=64)
        target_id = CharField(null=True, max_length=64)
        metadata = JSONField()
        ip = CharField(null=True, max_length=45)
        created_at = TimestampTZField()
        prev_hash = CharField(max_length=64)
        row_hash = CharField(unique=True, max_length=64)

        class Meta:
            database = db
            legacy_table_names = False
            table_name = 'audit_logs'
            indexes = (
                (('actor', 'created_at'), False),
            )
            constraints = [
                Check('length(action) > 0', name='audit_logs_action_not_empty_check'),
                Check('length(prev_hash) = 64 AND length(row_hash) = 64', name='audit_logs_hash_length_check'),
            ]


    class Budget(Model):
        created_at = TimestampTZField()
        updated_at = TimestampTZField()
        campaign = ForeignKeyField(Campaign, on_delete='CASCADE')
        start_date = DateField()
        end_date = DateField()
        amount_micros = BigIntegerField()
        currency = CharField(max_length=3)

        class Meta:
            database = db
            legacy_table_names = False
            table_name = 'budgets'
            constraints = [
                Check('end_date >= start_date', name='budgets_dates_check'),
                Check('amount_micros >= 0', name='budgets_amount_non_negative_check'),
                Check("length(currency) = 3 AND currency = upper(currency) AND substr(currency, 1, 1) BETWEEN 'A' AND 'Z' AND substr(currency, 2, 1) BETWEEN 'A' AND 'Z' AND substr(currency, 3, 1) BETWEEN 'A' AND 'Z'", name='budgets_currency_check'),
            ]


    class CampaignPerformance(Model):
        campaign = ForeignKeyField(Campaign, on_delete='CASCADE', index=False)
        date = DateField()
        impressions = BigIntegerField()
        clicks = BigIntegerField()
        conversions = BigIntegerField()
        spend_micros = BigIntegerField()
        revenue_micros = BigIntegerField()

        class Meta:
            database = db
            legacy_table_names = False
            table_name = 'campaign_performance'
            indexes = (
                (('campaign', 'date'), True),
            )
            constraints = [
                Check('impressions >= 0 AND clicks >= 0 AND conversions >= 0 AND spend_micros >= 0 AND revenue_micros >= 0', name='campaign_performance_non_negative_check'),
                Check('clicks <= impressions AND conversions <= clicks', name='campaign_performance_funnel_check'),
            ]


    class CampaignPlatformSetting(Model):
        created_at = TimestampTZField()
        updated_at = TimestampTZField()
        campaign = ForeignKeyField(Campaign, on_delete='CASCADE', index=False)
        platform = CharField(max_length=32)
        settings = JSONField()

        class Meta:
            database = db
            legacy_table_names = False
            table_name = 'campaign_platform_settings'
            indexes = (
                (('campaign', 'platform'), True),
            )
            constraints = [
                Check("platform IN ('google', 'meta', 'tiktok', 'linkedin', 'microsoft', 'snapchat', 'pinterest')", name='campaign_platform_settings_platform_check'),
            ]


    class Credential(Model):
        user = ForeignKeyField(User, on_delete='CASCADE', unique=True)
        password_hash = CharField()
        algorithm = CharField(max_length=32)
        changed_at = TimestampTZField()

        class Meta:
            database = db
            legacy_table_names = False
            table_name = 'credentials'
            constraints = [
                Check("algorithm IN ('argon2id')", name='credentials_algorithm_check'),
                Check('length(password_hash) > 0', name='credentials_hash_not_empty_check'),
            ]


    class Dashboard(Model):
        created_at = TimestampTZField()
        updated_at = TimestampTZField()
        owner = ForeignKeyField(User, on_delete='CASCADE', index=False)
        name = CharField(max_length=200)
        description = TextField()
        layout = JSONField()

        class Meta:
            database = db
            legacy_table_names = False
            table_name = 'dashboards'
            indexes = (
                (('owner', 'name'), True),
            )


    class SavedQuery(Model):
        created_at = TimestampTZField()
        updated_at = TimestampTZField()
        owner = ForeignKeyField(User, on_delete='CASCADE', index=False)
        name = CharField(max_length=200)
        description = TextField()
        definition = JSONField()

        class Meta:
            database = db
            legacy_table_names = False
            table_name = 'saved_queries'
            indexes = (
                (('owner', 'name'), True),
            )


    class Visualization(Model):
        created_at = TimestampTZField()
        updated_at = TimestampTZField()
        saved_query = ForeignKeyField(SavedQuery, on_delete='CASCADE')
        name = CharField(max_length=200)
        chart_type = CharField(max_length=16)
        options = JSONField()

        class Meta:
            database = db
            legacy_table_names = False
            table_name = 'visualizations'
            constraints = [
                Check("chart_type IN ('line', 'bar', 'area', 'table', 'kpi', 'pie', 'scatter')", name='visualizations_chart_type_check'),
            ]


    class DashboardWidget(Model):
        dashboard = ForeignKeyField(Dashboard, on_delete='CASCADE')
        visualization = ForeignKeyField(Visualization, on_delete='CASCADE')
        x = IntegerField()
        y = IntegerField()
        width = IntegerField()
        height = IntegerField()

        class Meta:
            database = db
            legacy_table_names = False
            table_name = 'dashboard_widgets'
            constraints = [
                Check('x >= 0 AND y >= 0 AND width >= 1 AND height >= 1 AND x + width <= 12', name='dashboard_widgets_in_grid_check'),
            ]


    class MLModel(Model):
        created_at = TimestampTZField()
        updated_at = TimestampTZField()
        name = CharField(unique=True, max_length=128)
        task = CharField(max_length=32)
        description = TextField()
        owner = ForeignKeyField(User, on_delete='SET NULL', null=True)

        class Meta:
            database = db
            legacy_table_names = False
            table_name = 'ml_models'
            constraints = [
                Check("task IN ('classification', 'regression', 'ranking', 'forecasting')", name='ml_models_task_check'),
                Check('length(name) > 0', name='ml_models_name_not_empty_check'),
            ]


    class TrainingJob(Model):
        created_at = TimestampTZField()
        updated_at = TimestampTZField()
        model = ForeignKeyField(MLModel, on_delete='CASCADE')
        status = CharField(max_length=16)
        parameters = JSONField()
        dataset_spec = JSONField()
        started_at = TimestampTZField(null=True)
        finished_at = TimestampTZField(null=True)
        error = TextField(null=True)

        class Meta:
            database = db
            legacy_table_names = False
            table_name = 'training_jobs'
            constraints = [
                Check("status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')", name='training_jobs_status_check'),
                Check('finished_at IS NULL OR started_at IS NULL OR finished_at >= started_at', name='training_jobs_finished_after_started_check'),
            ]


    class ModelVersion(Model):
        model = ForeignKeyField(MLModel, on_delete='CASCADE', index=False)
        version = IntegerField()
        stage = CharField(max_length=16)
        artifact_uri = CharField(max_length=1024)
        framework = CharField(max_length=64)
        hyperparameters = JSONField()
        description = TextField()
        training_job = ForeignKeyField(TrainingJob, on_delete='SET NULL', null=True)
        created_at = TimestampTZField()

        class Meta:
            database = db
            legacy_table_names = False
            table_name = 'model_versions'
            indexes = (
                (('model', 'version'), True),
            )
            constraints = [
                Check("stage IN ('none', 'staging', 'production', 'archived')", name='model_versions_stage_check'),
                Check('version >= 1', name='model_versions_version_positive_check'),
            ]

    ModelVersion.add_index(ModelVersion.index(ModelVersion.model, unique=True, name='model_versions_one_production').where(SQL('("stage" = \'production\')')))

    class FeatureImportance(Model):
        model_version = ForeignKeyField(ModelVersion, on_delete='CASCADE', index=False)
        feature = CharField(max_length=128)
        importance = DoubleField()
        rank = IntegerField()

        class Meta:
            database = db
            legacy_table_names = False
            table_name = 'feature_importances'
            indexes = (
                (('model_version', 'feature'), True),
                (('model_version', 'rank'), True),
            )
            constraints = [
                Check('rank >= 1', name='feature_importances_rank_positive_check'),
            ]


    class ModelMetric(Model):
        model_version = ForeignKeyField(ModelVersion, on_delete='CASCADE', index=False)
        name = CharField(max_length=64)
        value = DoubleField()
        split = CharField(max_length=16)
        step = IntegerField(null=True)
        recorded_at = TimestampTZField()

        class Meta:
            database = db
            legacy_table_names = False
            table_name = 'model_metrics'
            indexes = (
                (('model_version', 'name'), False),
            )
            constraints = [
                Check("split IN ('train', 'validation', 'test', 'production')", name='model_metrics_split_check'),
                Check('step IS NULL OR step >= 0', name='model_metrics_step_non_negative_check'),
            ]


    class Permission(Model):
        codename = CharField(unique=True, max_length=100)
        description = TextField()

        class Meta:
            database = db
            legacy_table_names = False
            table_name = 'permissions'
            constraints = [
                Check("codename = lower(codename) AND replace(codename, '.', '') <> codename AND ltrim(codename, '.') = codename AND rtrim(codename, '.') = codename", name='permissions_codename_format_check'),
            ]


    class PredictionLog(Model):
        id = BigAutoField()
        model_version = ForeignKeyField(ModelVersion, on_delete='RESTRICT', index=False)
        request_id = CharField(unique=True, max_length=64)
        ad = ForeignKeyField(Ad, on_delete='SET NULL', null=True)
        score = DoubleField()
        features = JSONField()
        latency_ms = DoubleField(null=True)
        created_at = TimestampTZField()

        class Meta:
            database = db
            legacy_table_names = False
            table_name = 'prediction_logs'
            indexes = (
                (('model_version', 'created_at'), False),
            )
            constraints = [
                Check('latency_ms IS NULL OR latency_ms >= 0', name='prediction_logs_latency_non_negative_check'),
            ]


    class ReportTemplate(Model):
        created_at = TimestampTZField()
        updated_at = TimestampTZField()
        name = CharField(unique=True, max_length=200)
        description = TextField()
        parameters = JSONField()
        created_by = ForeignKeyField(User, on_delete='SET NULL', null=True)

        class Meta:
            database = db
            legacy_table_names = False
            table_name = 'report_templates'


    class Report(Model):
        created_at = TimestampTZField()
        updated_at = TimestampTZField()
        template = ForeignKeyField(ReportTemplate, on_delete='SET NULL', null=True)
        owner = ForeignKeyField(User, on_delete='CASCADE')
        saved_query = ForeignKeyField(SavedQuery, on_delete='SET NULL', null=True)
        name = CharField(max_length=200)
        parameters = JSONField()

        class Meta:
            database = db
            legacy_table_names = False
            table_name = 'reports'


    class ReportExport(Model):
        report = ForeignKeyField(Report, on_delete='CASCADE')
        format = CharField(max_length=8)
        status = CharField(max_length=16)
        location = CharField(null=True, max_length=1024)
        row_count = BigIntegerField(null=True)
        error = TextField(null=True)
        requested_by = ForeignKeyField(User, on_delete='SET NULL', null=True)
        created_at = TimestampTZField()
        started_at = TimestampTZField(null=True)
        finished_at = TimestampTZField(null=True)

        class Meta:
            database = db
            legacy_table_names = False
            table_name = 'report_exports'
            constraints = [
                Check("format IN ('csv', 'jsonl')", name='report_exports_format_check'),
                Check("status IN ('pending', 'running', 'succeeded', 'failed')", name='report_exports_status_check'),
                Check('row_count IS NULL OR row_count >= 0', name='report_exports_row_count_non_negative_check'),
            ]


    class Role(Model):
        created_at = TimestampTZField()
        updated_at = TimestampTZField()
        name = CharField(unique=True, max_length=64)
        description = TextField()

        class Meta:
            database = db
            legacy_table_names = False
            table_name = 'roles'
            constraints = [
                Check('length(name) > 0', name='roles_name_not_empty_check'),
            ]


    class RolePermission(Model):
        role = ForeignKeyField(Role, on_delete='CASCADE')
        permission = ForeignKeyField(Permission, on_delete='CASCADE')

        class Meta:
            database = db
            legacy_table_names = False
            table_name = 'role_permissions'
            indexes = (
                (('role', 'permission'), True),
            )


    class ScheduledReport(Model):
        created_at = TimestampTZField()
        updated_at = TimestampTZField()
        report = ForeignKeyField(Report, on_delete='CASCADE')
        cron_expression = CharField(max_length=100)
        timezone = CharField(max_length=64)
        recipients = JSONField()
        is_active = BooleanField()
        next_run_at = TimestampTZField(null=True)
        last_run_at = TimestampTZField(null=True)

        class Meta:
            database = db
            legacy_table_names = False
            table_name = 'scheduled_reports'

    ScheduledReport.add_index(ScheduledReport.index(ScheduledReport.next_run_at, name='scheduled_reports_due').where(SQL('"is_active"')))

    class ShareLink(Model):
        resource_type = CharField(max_length=32)
        resource_id = CharField(max_length=64)
        token_hash = CharField(unique=True, max_length=64)
        prefix = CharField(max_length=16)
        permission = CharField(max_length=8)
        created_by = ForeignKeyField(User, on_delete='CASCADE')
        created_at = TimestampTZField()
        expires_at = TimestampTZField()
        revoked_at = TimestampTZField(null=True)

        class Meta:
            database = db
            legacy_table_names = False
            table_name = 'share_links'
            indexes = (
                (('resource_type', 'resource_id'), False),
            )
            constraints = [
                Check("resource_type IN ('dashboard', 'report', 'saved_query', 'visualization')", name='share_links_resource_type_check'),
                Check("permission IN ('view', 'edit')", name='share_links_permission_check'),
                Check('length(token_hash) = 64', name='share_links_hash_length_check'),
                Check('expires_at > created_at', name='share_links_expiry_after_creation_check'),
            ]


    class SpendRecord(Model):
        campaign = ForeignKeyField(Campaign, on_delete='CASCADE', index=False)
        occurred_at = TimestampTZField()
        amount_micros = BigIntegerField()
        currency = CharField(max_length=3)
        source = CharField(max_length=16)
        created_at = TimestampTZField()

        class Meta:
            database = db
            legacy_table_names = False
            table_name = 'spend_records'
            indexes = (
                (('campaign', 'occurred_at'), False),
            )
            constraints = [
                Check('amount_micros >= 0', name='spend_records_amount_non_negative_check'),
                Check("length(currency) = 3 AND currency = upper(currency) AND substr(currency, 1, 1) BETWEEN 'A' AND 'Z' AND substr(currency, 2, 1) BETWEEN 'A' AND 'Z' AND substr(currency, 3, 1) BETWEEN 'A' AND 'Z'", name='spend_records_currency_check'),
                Check("source IN ('platform_api', 'manual', 'adjustment', 'import')", name='spend_records_source_check'),
            ]


    class UserProfile(Model):
        created_at = TimestampTZField()
        updated_at = TimestampTZField()
        user = ForeignKeyField(User, on_delete='CASCADE', unique=True)
        display_name = CharField(max_length=200)
        company = CharField(null=True, max_length=200)
        timezone = CharField(max_length=64)
        locale = CharField(max_length=16)
        preferences = JSONField()

        class Meta:
            database = db
            legacy_table_names = False
            table_name = 'user_profiles'


    class UserRole(Model):
        user = ForeignKeyField(User, on_delete='CASCADE')
        role = ForeignKeyField(Role, on_delete='CASCADE')
        granted_by = ForeignKeyField(User, on_delete='SET NULL', null=True)
        granted_at = TimestampTZField()

        class Meta:
            database = db
            legacy_table_names = False
            table_name = 'user_roles'
            indexes = (
                (('user', 'role'), True),
            )


    db.create_tables([User, AccessToken, Campaign, Ad, AdMetric, AuditLog, Budget, CampaignPerformance, CampaignPlatformSetting, Credential, Dashboard, SavedQuery, Visualization, DashboardWidget, MLModel, TrainingJob, ModelVersion, FeatureImportance, ModelMetric, Permission, PredictionLog, ReportTemplate, Report, ReportExport, Role, RolePermission, ScheduledReport, ShareLink, SpendRecord, UserProfile, UserRole])


def down(migrator, db):
    for table in ['user_roles', 'user_profiles', 'spend_records', 'share_links', 'scheduled_reports', 'role_permissions', 'roles', 'report_exports', 'reports', 'report_templates', 'prediction_logs', 'permissions', 'model_metrics', 'feature_importances', 'model_versions', 'training_jobs', 'ml_models', 'dashboard_widgets', 'visualizations', 'saved_queries', 'dashboards', 'credentials', 'campaign_platform_settings', 'campaign_performance', 'budgets', 'audit_logs', 'ad_metrics', 'ads', 'campaigns', 'access_tokens', 'users']:
        migrator.migrate(migrator.drop_table(table))
