"""Campaign reads and writes: the user-campaigns view of the original design, N+1 free."""

from __future__ import annotations

import uuid
from typing import Any

from within_db import boundary as check
from within_db.boundary import public_api
from within_db.db import replica_read
from within_db.models.campaigns import Ad, Campaign
from within_db.models.users import User

__all__ = ["get_user_campaigns"]


@public_api
@replica_read
def get_user_campaigns(user_id: uuid.UUID | str) -> list[dict[str, Any]] | None:
    """Return ``[{"campaign": {...}, "ads": [{...}]}]`` for a user, newest campaign first.

    None if the user does not exist; ValidationError if ``user_id`` is not a UUID (or its
    text), on every backend. Three queries however many campaigns and ads: the
    user, the campaigns, and every ad of those campaigns in one join. Rows are converted
    straight to ``to_dict()`` form, without building model instances. Reads the replica
    when one is configured and usable.
    """
    user_id = check.uuid_value(user_id, "user_id")
    if not User.select(User.id).where(User.id == user_id).exists():
        return None
    campaigns = Campaign.json_rows(
        Campaign.select(*Campaign.public_fields())
        .where(Campaign.owner == user_id)
        .order_by(Campaign.created_at.desc(), Campaign.id))
    if not campaigns:
        return []
    ads_by_campaign: dict[str, list[dict[str, Any]]] = {c["id"]: [] for c in campaigns}
    ads = Ad.json_rows(
        Ad.select(*Ad.public_fields())
        .join(Campaign, on=(Ad.campaign == Campaign.id))
        .where(Campaign.owner == user_id)
        .order_by(Ad.created_at, Ad.id))
    for ad in ads:
        ads_by_campaign[ad["campaign_id"]].append(ad)
    return [{"campaign": c, "ads": ads_by_campaign[c["id"]]} for c in campaigns]
