"""A small FastAPI service on within_db: bearer tokens, RBAC, campaigns with ads, the
design's user-campaigns endpoint and keyset-paginated prediction logs.

Run: ``DATABASE_URL=sqlite:///within.db uvicorn examples.api.app:app``. Every endpoint is
async: queries go through ``within_db.aio`` (asyncpg or aiosqlite), never blocking the loop.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from within_db import aio, errors, schemas
from within_db.models.users import User
from within_db.repositories import CampaignRepository, Page, PredictionLogRepository
from within_db.services import users as user_service

log = logging.getLogger(__name__)

# One JSON error shape for every failure: {"error": {"code", "message", "details"?}}
STATUS = [
    (errors.NotFoundError, 404, "not_found"),
    (errors.PermissionDeniedError, 403, "forbidden"),
    (errors.ValidationError, 422, "invalid"),
    (errors.ConflictError, 409, "conflict"),
    (errors.InvalidTransitionError, 409, "conflict"),
    (errors.DatabaseUnavailableError, 503, "unavailable"),
]


class Unauthenticated(Exception):
    """No bearer token, or one that is unknown, expired, revoked or of an inactive user."""


def error(status_code: int, code: str, message: str, details: list | None = None,
          headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if details:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status_code, headers=headers)


def create_app(database_url: str | None = None) -> FastAPI:
    """Build the service; it binds ``within_db.aio`` to ``database_url`` (or $DATABASE_URL)
    when it starts and closes the pool when it stops."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        aio.connect(database_url)
        try:
            yield
        finally:
            await aio.close()

    app = FastAPI(title="within_db example API", lifespan=lifespan)

    @app.exception_handler(Unauthenticated)
    async def unauthenticated(request: Request, exc: Unauthenticated) -> JSONResponse:
        return error(401, "unauthenticated", "a valid bearer token is required",
                     headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # loc and msg only: pydantic's "input" would echo what was sent (a password, say)
        details = [{"loc": [str(p) for p in e["loc"]], "msg": e["msg"]} for e in exc.errors()]
        return error(422, "invalid", "the request is not valid", details)

    @app.exception_handler(errors.WithinDBError)
    async def domain_error(request: Request, exc: errors.WithinDBError) -> JSONResponse:
        for kind, code, name in STATUS:
            if isinstance(exc, kind):
                return error(code, name, str(exc))
        log.warning("unmapped within_db error %s", type(exc).__name__)
        return error(400, "bad_request", str(exc))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return error(500, "internal", "internal error")

    register_routes(app)
    return app


async def current_user(request: Request) -> User:
    """The owner of the request's bearer token (``services.users.verify_token``)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated()
    ip = request.client.host if request.client else None
    user = await aio.run(user_service.verify_token, token.strip(), ip)
    if user is None:
        raise Unauthenticated()
    return user


Actor = Annotated[User, Depends(current_user)]
Limit = Annotated[int, Query(ge=1, le=500)]


def register_routes(app: FastAPI) -> None:
    """Attach the endpoints (kept apart from create_app so the list reads in one place)."""

    @app.get("/me", response_model=schemas.UserRead)
    async def me(actor: Actor) -> Any:
        return schemas.UserRead.model_validate(actor)

    @app.get("/campaigns", response_model=Page[schemas.CampaignRead])
    async def list_campaigns(actor: Actor, status: str | None = None,
                             platform: str | None = None, owner_id: uuid.UUID | None = None,
                             order: str | None = None, cursor: str | None = None,
                             limit: Limit = 50) -> Any:
        filters = {"status": status, "platform": platform, "owner_id": owner_id}
        return await aio.awaitable(CampaignRepository(actor)).list(
            filters, order=order, cursor=cursor, limit=limit)

    @app.post("/campaigns", response_model=schemas.CampaignRead, status_code=201)
    async def create_campaign(actor: Actor, body: schemas.CampaignCreate) -> Any:
        return await aio.awaitable(CampaignRepository(actor)).create(body)

    @app.get("/campaigns/{campaign_id}", response_model=schemas.CampaignWithAds)
    async def get_campaign(actor: Actor, campaign_id: str) -> Any:
        return await aio.awaitable(CampaignRepository(actor)).get(campaign_id)

    @app.patch("/campaigns/{campaign_id}", response_model=schemas.CampaignRead)
    async def update_campaign(actor: Actor, campaign_id: str,
                              body: schemas.CampaignUpdate) -> Any:
        return await aio.awaitable(CampaignRepository(actor)).update(campaign_id, body)

    @app.delete("/campaigns/{campaign_id}", status_code=204)
    async def delete_campaign(actor: Actor, campaign_id: str) -> Response:
        await aio.awaitable(CampaignRepository(actor)).delete(campaign_id)
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    @app.post("/campaigns/{campaign_id}/ads", response_model=schemas.AdRead, status_code=201)
    async def add_ad(actor: Actor, campaign_id: str, body: schemas.AdCreate) -> Any:
        return await aio.awaitable(CampaignRepository(actor)).add_ad(campaign_id, body)

    @app.patch("/ads/{ad_id}", response_model=schemas.AdRead)
    async def update_ad(actor: Actor, ad_id: str, body: schemas.AdUpdate) -> Any:
        return await aio.awaitable(CampaignRepository(actor)).update_ad(ad_id, body)

    @app.delete("/ads/{ad_id}", status_code=204)
    async def delete_ad(actor: Actor, ad_id: str) -> Response:
        await aio.awaitable(CampaignRepository(actor)).delete_ad(ad_id)
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    @app.get("/users/{user_id}/campaigns", response_model=list[schemas.CampaignWithAds])
    async def user_campaigns(actor: Actor, user_id: str) -> Any:
        """The original design's example: a user's campaigns, newest first, with their ads."""
        return await aio.awaitable(CampaignRepository(actor)).user_campaigns(user_id)

    @app.get("/prediction-logs", response_model=Page[schemas.PredictionLogRead])
    async def prediction_logs(actor: Actor, model_version_id: int | None = None,
                              ad_id: uuid.UUID | None = None,
                              created_after: dt.datetime | None = None,
                              created_before: dt.datetime | None = None,
                              order: str | None = None, cursor: str | None = None,
                              limit: Limit = 100) -> Any:
        filters = {"model_version_id": model_version_id, "ad_id": ad_id,
                   "created_after": created_after, "created_before": created_before}
        return await aio.awaitable(PredictionLogRepository(actor)).list(
            filters, order=order, cursor=cursor, limit=limit)


app = create_app()
