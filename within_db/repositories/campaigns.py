"""Campaigns with their ads, scoped by owner: a user sees and edits their own campaigns;
``campaigns.view_all`` shows everyone's, ``campaigns.edit_all`` edits (and so sees) them.

Writes need ``campaigns.edit``. A campaign the actor may not see is reported as not found.
"""

from __future__ import annotations

import builtins
from typing import Any

from within_db.boundary import public_api
from within_db.db import write_transaction
from within_db.errors import NotFoundError
from within_db.models.campaigns import Ad, Campaign
from within_db.repositories.base import (
    Filter,
    Order,
    Page,
    Repository,
    as_uuid,
    parse_input,
    refused_writes,
)
from within_db.schemas import (
    AdCreate,
    AdRead,
    AdUpdate,
    CampaignCreate,
    CampaignRead,
    CampaignUpdate,
    CampaignWithAds,
    changes,
)
from within_db.services.campaigns import get_user_campaigns

VIEW_ALL = "campaigns.view_all"
EDIT = "campaigns.edit"
EDIT_ALL = "campaigns.edit_all"


class CampaignRepository(Repository):
    """Campaign and ad CRUD for one acting user, with keyset-paginated lists."""

    orders = {
        "-created_at": Order((Campaign.created_at, Campaign.id), descending=True),
        "created_at": Order((Campaign.created_at, Campaign.id)),
    }
    default_order = "-created_at"
    filters = {
        "owner_id": Filter(Campaign.owner),
        "status": Filter(Campaign.status),
        "platform": Filter(Campaign.platform),
        "objective": Filter(Campaign.objective),
        "created_after": Filter(Campaign.created_at, "gte"),
        "created_before": Filter(Campaign.created_at, "lt"),
    }

    # -- reads -------------------------------------------------------------------------------

    def _visible(self, campaign_id: Any, seen_by: str = VIEW_ALL) -> Campaign:
        """The campaign if the actor owns it or holds ``seen_by``. One query, two if it is
        someone else's."""
        found = Campaign.get_or_none(Campaign.id == as_uuid(campaign_id, "campaign"))
        if found is None or not (self.is_actor(found.owner_id) or self.can(seen_by)
                                 or self.can(VIEW_ALL)):
            raise NotFoundError("no campaign with that id")
        return found

    @public_api
    def get(self, campaign_id: Any) -> Any:
        """Return a visible campaign with its ads (``CampaignWithAds``).

        Two queries for the actor's own campaign, three for another's (the permission).
        """
        campaign = self._visible(campaign_id)
        ads = Ad.select().where(Ad.campaign == campaign.id).order_by(Ad.created_at, Ad.id)
        return CampaignWithAds(campaign=CampaignRead.model_validate(campaign),
                               ads=[AdRead.model_validate(a) for a in ads])

    @public_api
    def list(self, filters: dict[str, Any] | None = None, *, order: str | None = None,
             cursor: str | None = None, limit: int | None = None) -> Page:
        """Return one keyset page of visible campaigns (``Page[CampaignRead]``).

        Without ``owner_id`` the actor's own campaigns, or everyone's with
        ``campaigns.view_all``; another ``owner_id`` needs that permission
        (PermissionDeniedError). Two queries: the permission and the page (one when
        ``owner_id`` is the actor). Indexes: (owner_id, created_at), (created_at).
        """
        clean = self.clean_filters(filters)
        query = Campaign.select()
        owner = clean.get("owner_id")
        if owner is not None and not self.is_actor(owner):
            self.require(VIEW_ALL, "listing another user's campaigns")
        scope = None
        if owner is None and not self.can(VIEW_ALL):
            query = query.where(Campaign.owner == self.actor.id)
            scope = str(self.actor.id)
        return self.page(query, CampaignRead, order=order, filters=clean, cursor=cursor,
                         limit=limit, scope=scope)

    @public_api
    def user_campaigns(self, user_id: Any) -> builtins.list[Any]:
        """Return a user's campaigns, newest first, each with its ads (``CampaignWithAds``).

        The design's user-campaigns view through ``services.campaigns.get_user_campaigns``:
        three queries for the actor's own, four for another user's (``campaigns.view_all``,
        else NotFoundError, as for an unknown user).
        """
        user_id = as_uuid(user_id, "user")
        if not self.is_actor(user_id) and not self.can(VIEW_ALL):
            raise NotFoundError("no user with that id")
        found = get_user_campaigns(user_id)
        if found is None:
            raise NotFoundError("no user with that id")
        return [CampaignWithAds.model_validate(item) for item in found]

    # -- writes ------------------------------------------------------------------------------

    def _editable(self, campaign_id: Any) -> Campaign:
        campaign = self._visible(campaign_id, seen_by=EDIT_ALL)
        self.require(EDIT, "changing campaigns")
        if not self.is_actor(campaign.owner_id):
            self.require(EDIT_ALL, "changing another user's campaign")
        return campaign

    @public_api
    def create(self, data: Any) -> Any:
        """Create a campaign owned by the actor (needs ``campaigns.edit``); CampaignRead.

        Two queries: the permission and the insert. A CHECK the values break (end before
        start) raises ValidationError naming it.
        """
        values = parse_input(CampaignCreate, data).model_dump()
        self.require(EDIT, "creating campaigns")
        with refused_writes(), write_transaction():
            campaign = Campaign.create(owner=self.actor.id, **values)
        return CampaignRead.model_validate(campaign)

    @public_api
    def update(self, campaign_id: Any, data: Any) -> Any:
        """Change the fields given; CampaignRead. Three queries (four for another's)."""
        values = changes(parse_input(CampaignUpdate, data))
        campaign = self._editable(campaign_id)
        if values:
            for name, value in values.items():
                setattr(campaign, name, value)
            with refused_writes(), write_transaction():
                campaign.save(only=[*values, "updated_at"])
        return CampaignRead.model_validate(campaign)

    @public_api
    def delete(self, campaign_id: Any) -> None:
        """Delete a campaign with its ads and figures. Three queries (four for another's)."""
        campaign = self._editable(campaign_id)
        with refused_writes(), write_transaction():
            Campaign.delete().where(Campaign.id == campaign.id).execute()

    @public_api
    def add_ad(self, campaign_id: Any, data: Any) -> Any:
        """Add an ad to an editable campaign; AdRead. Three queries (four for another's)."""
        values = parse_input(AdCreate, data).model_dump()
        campaign = self._editable(campaign_id)
        with refused_writes(), write_transaction():
            ad = Ad.create(campaign=campaign.id, **values)
        return AdRead.model_validate(ad)

    def _editable_ad(self, ad_id: Any) -> Ad:
        ad = Ad.get_or_none(Ad.id == as_uuid(ad_id, "ad"))
        if ad is None:
            raise NotFoundError("no ad with that id")
        try:
            self._editable(ad.campaign_id)
        except NotFoundError:
            raise NotFoundError("no ad with that id") from None
        return ad

    @public_api
    def update_ad(self, ad_id: Any, data: Any) -> Any:
        """Change an ad's fields given; AdRead. Four queries (five for another's campaign)."""
        values = changes(parse_input(AdUpdate, data))
        ad = self._editable_ad(ad_id)
        if values:
            for name, value in values.items():
                setattr(ad, name, value)
            with refused_writes(), write_transaction():
                ad.save(only=[*values, "updated_at"])
        return AdRead.model_validate(ad)

    @public_api
    def delete_ad(self, ad_id: Any) -> None:
        """Delete an ad of an editable campaign. Four queries (five for another's campaign)."""
        ad = self._editable_ad(ad_id)
        with refused_writes(), write_transaction():
            Ad.delete().where(Ad.id == ad.id).execute()


__all__ = ["EDIT", "EDIT_ALL", "VIEW_ALL", "CampaignRepository"]
