"""ALL_MODELS: every within_db model in foreign-key dependency order."""

from within_db.models.analytics import (
    Dashboard,
    DashboardWidget,
    Report,
    ReportExport,
    ReportTemplate,
    SavedQuery,
    ScheduledReport,
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
    UserProfile,
    UserRole,
)

ALL_MODELS = (
    User, UserProfile, Credential, Role, Permission, RolePermission, UserRole, AccessToken,
    AuditLog,
    Campaign, CampaignPlatformSetting, Ad, AdMetric, CampaignPerformance, Budget, SpendRecord,
    MLModel, TrainingJob, ModelVersion, PredictionLog, ModelMetric, FeatureImportance,
    ReportTemplate, SavedQuery, Report, Visualization, ScheduledReport, Dashboard,
    DashboardWidget, ReportExport, ShareLink,
)

__all__ = ["ALL_MODELS"]
