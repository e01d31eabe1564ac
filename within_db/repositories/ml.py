"""The model registry (models and their versions) and the read-only prediction logs.

Any active user reads the registry; ``models.train`` registers models and versions,
``models.deploy`` moves versions between stages (``services.ml_system.transition_stage``).
Prediction logs need ``predictions.view``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from within_db.boundary import public_api
from within_db.db import write_transaction
from within_db.errors import NotFoundError
from within_db.models.ml_system import MLModel, ModelVersion, PredictionLog
from within_db.repositories.base import (
    Filter,
    Order,
    Page,
    Repository,
    as_int_id,
    parse_input,
    refused_writes,
)
from within_db.schemas import (
    MLModelCreate,
    MLModelRead,
    MLModelUpdate,
    ModelVersionCreate,
    ModelVersionRead,
    ModelVersionUpdate,
    PredictionLogRead,
    changes,
)
from within_db.services import ml_system as svc

TRAIN = "models.train"
DEPLOY = "models.deploy"
VIEW_PREDICTIONS = "predictions.view"


class ModelRegistryRepository(Repository):
    """Registered models and their numbered versions."""

    orders = {"name": Order((MLModel.name,)), "-name": Order((MLModel.name,), descending=True)}
    default_order = "name"
    filters = {"task": Filter(MLModel.task), "owner_id": Filter(MLModel.owner)}

    @public_api
    def get(self, model_id: Any) -> Any:
        """Return a registered model (MLModelRead). One query."""
        found = MLModel.get_or_none(MLModel.id == as_int_id(model_id, "model"))
        if found is None:
            raise NotFoundError("no model with that id")
        return MLModelRead.model_validate(found)

    @public_api
    def list(self, filters: dict[str, Any] | None = None, *, order: str | None = None,
             cursor: str | None = None, limit: int | None = None) -> Page:
        """Return one keyset page of models by name (``Page[MLModelRead]``). One query."""
        clean = self.clean_filters(filters)
        return self.page(MLModel.select(), MLModelRead, order=order, filters=clean,
                         cursor=cursor, limit=limit)

    @public_api
    def create(self, data: Any) -> Any:
        """Register a model owned by the actor (``models.train``); MLModelRead.

        Through ``services.ml_system.register_model``: ConflictError for a taken name.
        """
        new = parse_input(MLModelCreate, data)
        self.require(TRAIN, "registering models")
        model = svc.register_model(new.name, new.task, new.description, owner=self.actor)
        return MLModelRead.model_validate(model)

    @public_api
    def update(self, model_id: Any, data: Any) -> Any:
        """Change a model's description (``models.train``); MLModelRead. Three queries."""
        values = changes(parse_input(MLModelUpdate, data))
        self.require(TRAIN, "changing models")
        model = MLModel.get_or_none(MLModel.id == as_int_id(model_id, "model"))
        if model is None:
            raise NotFoundError("no model with that id")
        if values:
            for name, value in values.items():
                setattr(model, name, value)
            with refused_writes(), write_transaction():
                model.save(only=[*values, "updated_at"])
        return MLModelRead.model_validate(model)

    # -- versions ----------------------------------------------------------------------------

    version_orders: ClassVar[dict[str, Order]] = {
        "-version": Order((ModelVersion.version,), descending=True),
        "version": Order((ModelVersion.version,)),
    }

    @public_api
    def versions(self, model_id: Any, *, order: str | None = None, cursor: str | None = None,
                 limit: int | None = None) -> Page:
        """Return one keyset page of a model's versions, newest first by default
        (``Page[ModelVersionRead]``). One query, on the (model_id, version) unique index;
        an unknown model gives an empty page."""
        model_id = as_int_id(model_id, "model")
        query = ModelVersion.select().where(ModelVersion.model == model_id)
        return self.page(query, ModelVersionRead, order=order or "-version", filters={},
                         cursor=cursor, limit=limit, scope=model_id,
                         orders=self.version_orders)

    @public_api
    def create_version(self, model_id: Any, data: Any) -> Any:
        """Add the model's next version (``models.train``) through
        ``services.ml_system.create_version``; ModelVersionRead."""
        new = parse_input(ModelVersionCreate, data)
        self.require(TRAIN, "adding model versions")
        model = MLModel.get_or_none(MLModel.id == as_int_id(model_id, "model"))
        if model is None:
            raise NotFoundError("no model with that id")
        version = svc.create_version(model, new.artifact_uri, new.hyperparameters,
                                     framework=new.framework, description=new.description)
        return ModelVersionRead.model_validate(version)

    @public_api
    def update_version(self, version_id: Any, data: Any) -> Any:
        """Change a version's description (``models.train``) or stage (``models.deploy``,
        through ``services.ml_system.transition_stage``: promoting to production archives
        the current one); ModelVersionRead."""
        values = changes(parse_input(ModelVersionUpdate, data))
        if "stage" in values:
            self.require(DEPLOY, "changing a version's stage")
        if "description" in values:
            self.require(TRAIN, "changing a version's description")
        version = ModelVersion.get_or_none(ModelVersion.id == as_int_id(version_id, "version"))
        if version is None:
            raise NotFoundError("no model version with that id")
        with refused_writes(), write_transaction():
            if "description" in values:
                version.description = values["description"]
                version.save(only=["description"])
            if "stage" in values and values["stage"] != version.stage:
                svc.transition_stage(version, values["stage"])
        return ModelVersionRead.model_validate(version)


class PredictionLogRepository(Repository):
    """Prediction logs, read-only, newest first by id (the primary key)."""

    orders = {"-id": Order((PredictionLog.id,), descending=True),
              "id": Order((PredictionLog.id,))}
    default_order = "-id"
    filters = {
        "model_version_id": Filter(PredictionLog.model_version),
        "ad_id": Filter(PredictionLog.ad),
        "created_after": Filter(PredictionLog.created_at, "gte"),
        "created_before": Filter(PredictionLog.created_at, "lt"),
    }

    @public_api
    def get(self, log_id: Any) -> Any:
        """Return one prediction log (PredictionLogRead); needs ``predictions.view``.
        Two queries: the permission and the row."""
        log_id = as_int_id(log_id, "prediction log")
        self.require(VIEW_PREDICTIONS, "reading prediction logs")
        found = PredictionLog.get_or_none(PredictionLog.id == log_id)
        if found is None:
            raise NotFoundError("no prediction log with that id")
        return PredictionLogRead.model_validate(found)

    @public_api
    def list(self, filters: dict[str, Any] | None = None, *, order: str | None = None,
             cursor: str | None = None, limit: int | None = None) -> Page:
        """Return one keyset page of prediction logs (``Page[PredictionLogRead]``); needs
        ``predictions.view``. Two queries: the permission and the page, which seeks the
        primary key, so page 10,000 costs what page 1 does."""
        clean = self.clean_filters(filters)
        self.require(VIEW_PREDICTIONS, "reading prediction logs")
        return self.page(PredictionLog.select(), PredictionLogRead, order=order,
                         filters=clean, cursor=cursor, limit=limit)


__all__ = [
    "DEPLOY",
    "TRAIN",
    "VIEW_PREDICTIONS",
    "ModelRegistryRepository",
    "PredictionLogRepository",
]
