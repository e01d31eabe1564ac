"""Users: everyone reads and renames themself; ``users.manage`` lists, creates, reads,
renames, deactivates and reactivates others.

Users are deactivated, never deleted (their audit history and campaigns RESTRICT it).
Creating one goes through ``services.users.create_user`` (Argon2id hash, profile, audit).
"""

from __future__ import annotations

from typing import Any

from within_db.boundary import public_api
from within_db.db import write_transaction
from within_db.errors import NotFoundError, ValidationError
from within_db.models.users import User
from within_db.repositories.base import (
    Filter,
    Order,
    Page,
    Repository,
    as_uuid,
    parse_input,
    refused_writes,
)
from within_db.schemas import UserCreate, UserRead, UserUpdate, changes
from within_db.services import users as svc
from within_db.services.audit import record_event

MANAGE = "users.manage"


class UserRepository(Repository):
    """User accounts as one acting user may see and change them."""

    orders = {"email": Order((User.email,)), "-email": Order((User.email,), descending=True)}
    default_order = "email"
    filters = {"is_active": Filter(User.is_active), "is_superuser": Filter(User.is_superuser)}

    @public_api
    def get(self, user_id: Any) -> Any:
        """Return a user (UserRead): the actor in one query; another with ``users.manage``
        in two (NotFoundError without it, as for an unknown id)."""
        user_id = as_uuid(user_id, "user")
        if not self.is_actor(user_id) and not self.can(MANAGE):
            raise NotFoundError("no user with that id")
        found = User.get_or_none(User.id == user_id)
        if found is None:
            raise NotFoundError("no user with that id")
        return UserRead.model_validate(found)

    @public_api
    def list(self, filters: dict[str, Any] | None = None, *, order: str | None = None,
             cursor: str | None = None, limit: int | None = None) -> Page:
        """Return one keyset page of users by email (``Page[UserRead]``); needs
        ``users.manage``. Two queries: the permission and the page (unique email index)."""
        clean = self.clean_filters(filters)
        self.require(MANAGE, "listing users")
        return self.page(User.select(), UserRead, order=order, filters=clean, cursor=cursor,
                         limit=limit)

    @public_api
    def create(self, data: Any) -> Any:
        """Create a user with a password through ``services.users.create_user``; UserRead.

        Needs ``users.manage``. ConflictError for a taken email, ValidationError for a bad
        email or password.
        """
        new = parse_input(UserCreate, data)
        self.require(MANAGE, "creating users")
        user = svc.create_user(new.email, new.password.get_secret_value(),
                               full_name=new.full_name, actor=self.actor)
        return UserRead.model_validate(user)

    @public_api
    def update(self, user_id: Any, data: Any) -> Any:
        """Change ``full_name`` (the actor's own, or anyone's with ``users.manage``) or
        ``is_active`` (``users.manage`` only, never one's own); UserRead.

        Deactivating revokes the user's tokens. Audited as ``user.updated``.
        """
        values = changes(parse_input(UserUpdate, data))
        user_id = as_uuid(user_id, "user")
        own = self.is_actor(user_id)
        if "is_active" in values:
            if own:
                raise ValidationError("you cannot change whether your own account is active")
            self.require(MANAGE, "activating or deactivating users")
        elif not own and not self.can(MANAGE):
            raise NotFoundError("no user with that id")
        user = User.get_or_none(User.id == user_id)
        if user is None:
            raise NotFoundError("no user with that id")
        if values:
            for name, value in values.items():
                setattr(user, name, value)
            with refused_writes(), write_transaction():
                user.save(only=[*values, "updated_at"])
                if values.get("is_active") is False:
                    svc.revoke_all(user, actor=self.actor)
                record_event(self.actor, "user.updated", target=user,
                             metadata={"fields": sorted(values)})
        return UserRead.model_validate(user)


__all__ = ["MANAGE", "UserRepository"]
