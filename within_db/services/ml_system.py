"""The model registry, version stages, training-job lifecycle and ML data access.

Version numbers are assigned under a lock on the model row (PostgreSQL) or an IMMEDIATE
transaction (SQLite), so concurrent writers never collide. Job transitions are conditional
UPDATEs: a lost race is reported as an illegal transition, never silently applied.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from typing import Any

import peewee

from within_db import batch
from within_db import boundary as check
from within_db.batch.bulk import rows_argument
from within_db.boundary import public_api
from within_db.db import bound, database, write_transaction
from within_db.errors import (
    BulkInsertError,
    ConflictError,
    InvalidTransitionError,
    NotFoundError,
    ValidationError,
)
from within_db.fields import utcnow
from within_db.integrity import conflict_on
from within_db.models.campaigns import OBJECTIVES, PLATFORMS, Campaign, CampaignPerformance
from within_db.models.ml_system import (
    SPLITS,
    STAGES,
    TASKS,
    FeatureImportance,
    MLModel,
    ModelMetric,
    ModelVersion,
    PredictionLog,
    TrainingJob,
)
from within_db.models.users import User

__all__ = [
    "TRANSITIONS", "create_version", "log_feature_importance", "log_metrics", "log_predictions",
    "mark_cancelled", "mark_failed", "mark_running", "mark_succeeded", "production_version",
    "queue_training_job", "register_model", "training_rows", "transition_stage",
]

MAX_METRICS = 1_000

# status -> statuses it may move to
TRANSITIONS = {
    "queued": ("running", "cancelled"),
    "running": ("succeeded", "failed", "cancelled"),
    "succeeded": (),
    "failed": (),
    "cancelled": (),
}


@public_api
def register_model(name: str, task: str, description: str = "", owner: User | None = None,
                   now: dt.datetime | None = None) -> MLModel:
    """Register a model by unique name; ConflictError if the name is taken."""
    check.text(name, "model name", max_length=MLModel.name.max_length)
    check.choice(task, "task", TASKS)
    check.text(description, "description", empty=True, multiline=True)
    check.optional_instance(owner, User, "owner")
    now = check.optional_instant(now, "now") or utcnow()
    with conflict_on("ml_models_name",
                     "a model with that name is already registered"), database.atomic():
        return MLModel.create(name=name.strip(), task=task, description=description,
                              owner=owner, created_at=now, updated_at=now)


def _lock_model(model_id: int) -> MLModel:
    found = bound().lock_rows(MLModel.select().where(MLModel.id == model_id)).first()
    if found is None:
        raise NotFoundError("no such registered model")
    return found


@public_api
def create_version(model: MLModel, artifact_uri: str, hyperparameters: dict | None = None,
                   training_job: TrainingJob | None = None, framework: str = "",
                   description: str = "", stage: str = "none") -> ModelVersion:
    """Create the model's next version (1, 2, ...), safe under concurrent writers."""
    check.instance(model, MLModel, "model")
    check.text(artifact_uri, "artifact_uri", max_length=ModelVersion.artifact_uri.max_length)
    hyperparameters = check.json_object(hyperparameters, "hyperparameters")
    if training_job is not None and check.instance(
            training_job, TrainingJob, "training_job").model_id != model.id:
        raise ValidationError("training_job belongs to another model")
    check.text(framework, "framework", max_length=ModelVersion.framework.max_length,
               empty=True)
    check.text(description, "description", empty=True, multiline=True)
    check.choice(stage, "stage", STAGES)
    with write_transaction():
        _lock_model(model.id)
        last = (ModelVersion.select(peewee.fn.MAX(ModelVersion.version))
                .where(ModelVersion.model == model.id).scalar())
        version = ModelVersion.create(model=model.id, version=(last or 0) + 1,
                                      artifact_uri=artifact_uri, framework=framework,
                                      hyperparameters=hyperparameters,
                                      training_job=training_job, description=description)
        if stage != "none":
            transition_stage(version, stage)
    return version


@public_api
def transition_stage(version: ModelVersion, stage: str,
                     archive_existing: bool = True) -> ModelVersion:
    """Move a version to ``stage``; promoting to production archives the current one.

    With ``archive_existing=False`` a promotion over an existing production version raises
    ConflictError. One transaction; the partial unique index is the last line of defence.
    """
    check.instance(version, ModelVersion, "version")
    check.choice(stage, "stage", STAGES)
    check.flag(archive_existing, "archive_existing")
    with write_transaction():
        _lock_model(version.model_id)
        if stage == "production":
            current = ModelVersion.select().where(ModelVersion.model == version.model_id,
                                                  ModelVersion.stage == "production",
                                                  ModelVersion.id != version.id)
            if current.exists():
                if not archive_existing:
                    raise ConflictError("the model already has a production version")
                (ModelVersion.update(stage="archived")
                 .where(ModelVersion.id.in_(current.select(ModelVersion.id))).execute())
        ModelVersion.update(stage=stage).where(ModelVersion.id == version.id).execute()
    version.stage = stage
    return version


@public_api
def production_version(model_name: str) -> ModelVersion | None:
    """Return the production version of the named model, or None. One query."""
    check.text(model_name, "model_name", max_length=MLModel.name.max_length)
    return (ModelVersion.select().join(MLModel)
            .where(MLModel.name == model_name, ModelVersion.stage == "production").first())


# -- training jobs --------------------------------------------------------------------------


@public_api
def queue_training_job(model: MLModel, parameters: dict | None = None,
                       dataset_spec: dict | None = None) -> TrainingJob:
    """Queue a training job for ``model``."""
    check.instance(model, MLModel, "model")
    parameters = check.json_object(parameters, "parameters")
    dataset_spec = check.json_object(dataset_spec, "dataset_spec")
    with database.atomic():
        return TrainingJob.create(model=model, parameters=parameters, dataset_spec=dataset_spec)


def _transition(job: TrainingJob, to: str, **values: Any) -> TrainingJob:
    check.instance(job, TrainingJob, "job")
    allowed_from = [s for s, targets in TRANSITIONS.items() if to in targets]
    now = utcnow()
    updated = (TrainingJob.update(status=to, updated_at=now, **values)
               .where(TrainingJob.id == job.id, TrainingJob.status.in_(allowed_from))
               .execute())
    if not updated:
        current = TrainingJob.select(TrainingJob.status).where(TrainingJob.id == job.id).scalar()
        if current is None:
            raise NotFoundError("no such training job")
        raise InvalidTransitionError(
            f"training job {job.id} is {current}; it cannot become {to} "
            f"(allowed from {current}: {', '.join(TRANSITIONS[current]) or 'none, it is final'})")
    job.status = to
    for key, value in values.items():
        setattr(job, key, value)
    return job


@public_api
def mark_running(job: TrainingJob) -> TrainingJob:
    """queued -> running; sets ``started_at``."""
    return _transition(job, "running", started_at=utcnow())


@public_api
def mark_succeeded(job: TrainingJob, artifact_uri: str | None = None,
                   metrics: dict[str, float] | None = None, hyperparameters: dict | None = None,
                   framework: str = "") -> ModelVersion | None:
    """running -> succeeded; registers the resulting version and its metrics if given."""
    check.instance(job, TrainingJob, "job")
    if artifact_uri is not None:
        check.text(artifact_uri, "artifact_uri",
                   max_length=ModelVersion.artifact_uri.max_length)
    elif metrics or hyperparameters or framework:
        raise ValidationError("metrics, hyperparameters and framework need an artifact_uri")
    metrics = _metrics(metrics or {})
    hyperparameters = check.json_object(hyperparameters, "hyperparameters")
    check.text(framework, "framework", max_length=ModelVersion.framework.max_length,
               empty=True)
    with write_transaction():
        _transition(job, "succeeded", finished_at=utcnow())
        if artifact_uri is None:
            return None
        version = create_version(job.model, artifact_uri,
                                 hyperparameters=hyperparameters or job.parameters,
                                 training_job=job, framework=framework)
        if metrics:
            log_metrics(version, metrics, split="validation")
    return version


@public_api
def mark_failed(job: TrainingJob, error: str | BaseException) -> TrainingJob:
    """running -> failed, keeping the error text (or the exception's class and text)."""
    check.instance(job, TrainingJob, "job")
    if isinstance(error, BaseException):
        error = f"{type(error).__name__}: {error}".replace("\x00", "")
    check.text(error, "error", max_length=check.MAX_TEXT, multiline=True)
    return _transition(job, "failed", finished_at=utcnow(), error=error)


@public_api
def mark_cancelled(job: TrainingJob) -> TrainingJob:
    """queued or running -> cancelled."""
    return _transition(job, "cancelled", finished_at=utcnow())


# -- metrics, importances, predictions ------------------------------------------------------


def _metrics(metrics: object, name: str = "metrics", key_length: int = 64
             ) -> dict[str, float]:
    """A dict of text names to finite numbers."""
    if not isinstance(metrics, dict):
        raise ValidationError(f"{name} must be a dict of names to numbers")
    if len(metrics) > MAX_METRICS:
        raise ValidationError(f"{name} has more than {MAX_METRICS} entries")
    return {check.text(key, f"a name in {name}", max_length=key_length):
            check.number(value, f"{name} values") for key, value in metrics.items()}


@public_api
def log_metrics(version: ModelVersion, metrics: dict[str, float], split: str = "validation",
                step: int | None = None, recorded_at: dt.datetime | None = None) -> int:
    """Record several metrics of a version in one round trip; return how many."""
    check.instance(version, ModelVersion, "version")
    metrics = _metrics(metrics, key_length=ModelMetric.name.max_length)
    check.choice(split, "split", SPLITS)
    check.optional_integer(step, "step", low=0, high=2**31 - 1)
    when = check.optional_instant(recorded_at, "recorded_at") or utcnow()
    if not metrics:
        return 0
    rows = [{"model_version": version.id, "name": name, "value": value, "split": split,
             "step": step, "recorded_at": when} for name, value in metrics.items()]
    with database.atomic():
        ModelMetric.insert_many(rows).execute()
    return len(rows)


@public_api
def log_feature_importance(version: ModelVersion, importances: dict[str, float]) -> int:
    """Replace the version's feature importances atomically; rank 1 is the most important."""
    check.instance(version, ModelVersion, "version")
    importances = _metrics(importances, "importances",
                           key_length=FeatureImportance.feature.max_length)
    ranked = sorted(importances.items(), key=lambda kv: (-kv[1], kv[0]))
    rows = [{"model_version": version.id, "feature": feature, "importance": float(value),
             "rank": rank} for rank, (feature, value) in enumerate(ranked, start=1)]
    with write_transaction():
        FeatureImportance.delete().where(FeatureImportance.model_version == version.id).execute()
        if rows:
            FeatureImportance.insert_many(rows).execute()
    return len(rows)


@public_api
def log_predictions(version: ModelVersion, rows: Iterable[dict[str, Any]],
                    batch_size: int | None = None) -> int:
    """Bulk-write prediction logs of ``version`` (dicts without ``model_version``).

    A row that is not a dict, or that names ``model_version`` itself, is refused with
    BulkInsertError naming its position; nothing is then written.
    """
    check.instance(version, ModelVersion, "version")
    rows_argument(rows)

    def stamped() -> Iterator[dict[str, Any]]:
        for position, row in enumerate(rows):
            if not isinstance(row, dict) or "model_version" in row:
                raise BulkInsertError(f"row {position} must be a dict without model_version; "
                                      "nothing was written", position=position)
            yield {**row, "model_version": version.id}

    return batch.bulk_insert(PredictionLog, stamped(), batch_size=batch_size)


@public_api
def training_rows(start: dt.date, end: dt.date, platforms: list[str] | None = None,
                  objectives: list[str] | None = None,
                  chunk_size: int = batch.DEFAULT_CHUNK) -> Iterator[dict[str, Any]]:
    """Stream daily campaign performance joined with campaign attributes, for features.

    Rows are dicts ordered by (date, campaign); memory stays flat however long the range.
    Arguments are checked when called, before the first row is asked for.
    """
    check.day(start, "start")
    check.day(end, "end")
    if platforms is not None:
        check.text_list(platforms, "platforms", item=lambda v, n: check.choice(v, n, PLATFORMS))
    if objectives is not None:
        check.text_list(objectives, "objectives",
                        item=lambda v, n: check.choice(v, n, OBJECTIVES))
    if end < start:
        raise ValidationError("end date is before start date")
    query = (CampaignPerformance
             .select(CampaignPerformance.date, CampaignPerformance.campaign.alias("campaign_id"),
                     Campaign.platform, Campaign.objective, Campaign.currency,
                     CampaignPerformance.impressions, CampaignPerformance.clicks,
                     CampaignPerformance.conversions, CampaignPerformance.spend_micros,
                     CampaignPerformance.revenue_micros)
             .join(Campaign)
             .where(CampaignPerformance.date.between(start, end))
             .order_by(CampaignPerformance.date, CampaignPerformance.campaign))
    if platforms:
        query = query.where(Campaign.platform.in_(platforms))
    if objectives:
        query = query.where(Campaign.objective.in_(objectives))
    return batch.stream(query.dicts(), chunk_size=chunk_size)
