"""ML system domain: model registry and versions, training jobs, predictions, metrics.

Lifecycle rules (stage swaps, job transitions) live in ``services.ml_system``; the database
keeps the last line: one production version per model, legal values, unique numbering.
"""

from within_db.base import BaseModel, TimestampedModel, check, choices, one_of
from within_db.fields import (
    BigAutoField,
    CharField,
    DoubleField,
    ForeignKeyField,
    IntegerField,
    JSONField,
    TextField,
    UTCDateTimeField,
    utcnow,
)
from within_db.models.campaigns import Ad
from within_db.models.users import User

__all__ = [
    "FeatureImportance", "JOB_STATUSES", "MLModel", "ModelMetric", "ModelVersion", "PredictionLog",
    "SPLITS", "STAGES", "TASKS", "TrainingJob",
]

TASKS = ("classification", "regression", "ranking", "forecasting")
STAGES = ("none", "staging", "production", "archived")
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
SPLITS = ("train", "validation", "test", "production")


class MLModel(TimestampedModel):
    """A registered model, unique by name; survives its owner (SET NULL)."""

    name = CharField(max_length=128, unique=True)
    task = CharField(max_length=32, choices=choices(TASKS))
    description = TextField(default="")
    owner = ForeignKeyField(User, null=True, on_delete="SET NULL", backref="ml_models")

    class Meta:
        table_name = "ml_models"
        constraints = [
            check("ml_models", "task", one_of("task", TASKS)),
            check("ml_models", "name_not_empty", "length(name) > 0"),
        ]


class TrainingJob(TimestampedModel):
    """One training run of a model and its lifecycle timestamps."""

    model = ForeignKeyField(MLModel, on_delete="CASCADE", backref="training_jobs")
    model_id: int  # peewee's id accessor, declared for type checkers
    status = CharField(max_length=16, default="queued", choices=choices(JOB_STATUSES))
    parameters = JSONField(default=dict)
    dataset_spec = JSONField(default=dict)
    started_at = UTCDateTimeField(null=True)
    finished_at = UTCDateTimeField(null=True)
    error = TextField(null=True)

    class Meta:
        table_name = "training_jobs"
        constraints = [
            check("training_jobs", "status", one_of("status", JOB_STATUSES)),
            check("training_jobs", "finished_after_started",
                  "finished_at IS NULL OR started_at IS NULL OR finished_at >= started_at"),
        ]


class ModelVersion(BaseModel):
    """A numbered version of a model; (model, version) unique, one production per model."""

    model = ForeignKeyField(MLModel, on_delete="CASCADE", backref="versions", index=False)
    model_id: int  # peewee's id accessor, declared for type checkers
    version = IntegerField()
    stage = CharField(max_length=16, default="none", choices=choices(STAGES))
    artifact_uri = CharField(max_length=1024)
    framework = CharField(max_length=64, default="")
    hyperparameters = JSONField(default=dict)
    description = TextField(default="")
    training_job = ForeignKeyField(TrainingJob, null=True, on_delete="SET NULL",
                                   backref="model_versions")
    created_at = UTCDateTimeField(default=utcnow)

    class Meta:
        table_name = "model_versions"
        indexes = ((("model", "version"), True),)
        constraints = [
            check("model_versions", "stage", one_of("stage", STAGES)),
            check("model_versions", "version_positive", "version >= 1"),
        ]


ModelVersion.add_index(
    ModelVersion.index(ModelVersion.model, unique=True, name="model_versions_one_production")
    .where(ModelVersion.stage == "production")
)


class PredictionLog(BaseModel):
    """One scored request. Versions with predictions cannot be deleted (RESTRICT).

    On PostgreSQL the table is range-partitioned by month on ``created_at`` (primary key
    ``(id, created_at)``) and ``request_id`` stays unique across every month through the
    ``prediction_request_ids`` guard table a trigger fills; SQLite keeps one plain table.
    ``within_db.partitions`` maintains the months.
    """

    id = BigAutoField()
    model_version = ForeignKeyField(ModelVersion, on_delete="RESTRICT", backref="+",
                                    index=False)
    request_id = CharField(max_length=64, unique=True)
    ad = ForeignKeyField(Ad, null=True, on_delete="SET NULL", backref="+")
    score = DoubleField()
    features = JSONField(default=dict)
    latency_ms = DoubleField(null=True)
    created_at = UTCDateTimeField(default=utcnow)

    class Meta:
        table_name = "prediction_logs"
        indexes = ((("model_version", "created_at"), False),)
        # read by the database classes (within_db.db): where the backend partitions tables, this one
        # is range-partitioned by month on the column, and each guarded unique column keeps
        # its uniqueness across partitions in the named single-column table
        partition_by = "created_at"
        unique_guards = {"request_id": "prediction_request_ids"}
        constraints = [
            check("prediction_logs", "latency_non_negative",
                  "latency_ms IS NULL OR latency_ms >= 0"),
        ]


class ModelMetric(BaseModel):
    """A named metric value of a version on a data split, optionally at a training step."""

    model_version = ForeignKeyField(ModelVersion, on_delete="CASCADE", backref="metrics",
                                    index=False)
    name = CharField(max_length=64)
    value = DoubleField()
    split = CharField(max_length=16, default="validation", choices=choices(SPLITS))
    step = IntegerField(null=True)
    recorded_at = UTCDateTimeField(default=utcnow)

    class Meta:
        table_name = "model_metrics"
        indexes = ((("model_version", "name"), False),)
        constraints = [
            check("model_metrics", "split", one_of("split", SPLITS)),
            check("model_metrics", "step_non_negative", "step IS NULL OR step >= 0"),
        ]


class FeatureImportance(BaseModel):
    """A feature's importance in a version; unique per feature and per rank."""

    model_version = ForeignKeyField(ModelVersion, on_delete="CASCADE",
                                    backref="feature_importances", index=False)
    feature = CharField(max_length=128)
    importance = DoubleField()
    rank = IntegerField()

    class Meta:
        table_name = "feature_importances"
        indexes = (
            (("model_version", "feature"), True),
            (("model_version", "rank"), True),
        )
        constraints = [check("feature_importances", "rank_positive", "rank >= 1")]
