"""Saved queries, one owner at a time: the actor's own, or another owner's with
``analytics.run_any``. Only the owner changes or deletes a saved query.

Definitions are checked by the analytics services (``validate_definition``) on every write.
"""

from __future__ import annotations

from typing import Any

from within_db.boundary import public_api
from within_db.db import write_transaction
from within_db.errors import NotFoundError
from within_db.models.analytics import SavedQuery
from within_db.repositories.base import (
    Filter,
    Order,
    Page,
    Repository,
    as_int_id,
    parse_input,
    refused_writes,
)
from within_db.schemas import SavedQueryCreate, SavedQueryRead, SavedQueryUpdate, changes
from within_db.services.analytics import RUN_ANY, create_saved_query
from within_db.services.analytics.compiler import validate_definition


class SavedQueryRepository(Repository):
    """Saved queries of one owner per list, by name (the (owner_id, name) unique index)."""

    orders = {"name": Order((SavedQuery.name,)),
              "-name": Order((SavedQuery.name,), descending=True)}
    default_order = "name"
    filters = {"owner_id": Filter(SavedQuery.owner)}

    def _visible(self, query_id: Any) -> SavedQuery:
        found = SavedQuery.get_or_none(SavedQuery.id == as_int_id(query_id, "saved query"))
        if found is None or not (self.is_actor(found.owner_id) or self.can(RUN_ANY)):
            raise NotFoundError("no saved query with that id")
        return found

    @public_api
    def get(self, query_id: Any) -> Any:
        """Return a visible saved query (SavedQueryRead). One query, two for another's."""
        return SavedQueryRead.model_validate(self._visible(query_id))

    @public_api
    def list(self, filters: dict[str, Any] | None = None, *, order: str | None = None,
             cursor: str | None = None, limit: int | None = None) -> Page:
        """Return one keyset page of one owner's saved queries (``Page[SavedQueryRead]``).

        The owner is ``owner_id`` (another user's needs ``analytics.run_any``) or the actor.
        One query for the actor's own, two for another's.
        """
        clean = self.clean_filters(filters)
        owner = clean.pop("owner_id", None) or self.actor.id
        if not self.is_actor(owner):
            self.require(RUN_ANY, "listing another user's saved queries")
        query = SavedQuery.select().where(SavedQuery.owner == owner)
        return self.page(query, SavedQueryRead, order=order, filters=clean, cursor=cursor,
                         limit=limit, scope=str(owner))

    @public_api
    def create(self, data: Any) -> Any:
        """Save a query owned by the actor through ``services.analytics.create_saved_query``
        (ValidationError for a bad definition, ConflictError for a taken name)."""
        new = parse_input(SavedQueryCreate, data)
        saved = create_saved_query(self.actor, new.name, new.definition,
                                   description=new.description)
        return SavedQueryRead.model_validate(saved)

    def _owned(self, query_id: Any) -> SavedQuery:
        found = self._visible(query_id)
        if not self.is_actor(found.owner_id):
            raise NotFoundError("no saved query of yours with that id")
        return found

    @public_api
    def update(self, query_id: Any, data: Any) -> Any:
        """Change the owner's saved query (a new definition is validated); SavedQueryRead.
        Two queries."""
        values = changes(parse_input(SavedQueryUpdate, data))
        if "definition" in values:
            validate_definition(values["definition"])
        saved = self._owned(query_id)
        if values:
            for name, value in values.items():
                setattr(saved, name, value)
            with refused_writes(), write_transaction():
                saved.save(only=[*values, "updated_at"])
        return SavedQueryRead.model_validate(saved)

    @public_api
    def delete(self, query_id: Any) -> None:
        """Delete the owner's saved query (its visualizations go with it). Two queries."""
        saved = self._owned(query_id)
        with refused_writes(), write_transaction():
            SavedQuery.delete().where(SavedQuery.id == saved.id).execute()


__all__ = ["SavedQueryRepository"]
