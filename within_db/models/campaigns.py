"""Campaigns domain: campaigns, platform settings, ads, daily metrics, budgets and spend.

Money is integer micros (``MoneyField``); daily metrics are in their campaign's currency.
"""

import uuid

from within_db.base import (
    BaseModel,
    TimestampedModel,
    check,
    choices,
    currency_code,
    non_negative,
    one_of,
)
from within_db.fields import (
    BigIntegerField,
    CharField,
    DateField,
    ForeignKeyField,
    JSONField,
    MoneyField,
    TextField,
    UTCDateTimeField,
    UUIDField,
    utcnow,
)
from within_db.models.users import User

__all__ = [
    "AD_STATUSES", "Ad", "AdMetric", "Budget", "CAMPAIGN_STATUSES", "CREATIVE_TYPES", "Campaign",
    "CampaignPerformance", "CampaignPlatformSetting", "OBJECTIVES", "PLATFORMS", "SPEND_SOURCES",
    "SpendRecord",
]

PLATFORMS = ("google", "meta", "tiktok", "linkedin", "microsoft", "snapchat", "pinterest")
OBJECTIVES = ("awareness", "traffic", "engagement", "leads", "app_installs", "sales")
CAMPAIGN_STATUSES = ("draft", "active", "paused", "completed", "archived")
AD_STATUSES = ("draft", "active", "paused", "archived")
CREATIVE_TYPES = ("image", "video", "carousel", "text", "html5")
SPEND_SOURCES = ("platform_api", "manual", "adjustment", "import")


class Campaign(TimestampedModel):
    """An advertising campaign on one platform; the owner is RESTRICTed (spend history)."""

    id = UUIDField(primary_key=True, default=uuid.uuid4)
    owner = ForeignKeyField(User, on_delete="RESTRICT", backref="campaigns", index=False)
    owner_id: uuid.UUID  # peewee's id accessor, declared for type checkers
    name = CharField(max_length=200)
    objective = CharField(max_length=32, choices=choices(OBJECTIVES))
    platform = CharField(max_length=32, choices=choices(PLATFORMS))
    status = CharField(max_length=16, default="draft", choices=choices(CAMPAIGN_STATUSES))
    start_date = DateField()
    end_date = DateField(null=True)
    total_budget_micros = MoneyField(default=0)
    currency = CharField(max_length=3, default="USD")
    metadata = JSONField(default=dict)

    class Meta:
        table_name = "campaigns"
        # (owner, created_at) serves a user's campaigns newest first; created_at alone the
        # keyset pages of every campaign (repositories.campaigns)
        indexes = ((("owner", "created_at"), False), (("created_at",), False))
        constraints = [
            check("campaigns", "objective", one_of("objective", OBJECTIVES)),
            check("campaigns", "platform", one_of("platform", PLATFORMS)),
            check("campaigns", "status", one_of("status", CAMPAIGN_STATUSES)),
            check("campaigns", "dates", "end_date IS NULL OR end_date >= start_date"),
            check("campaigns", "budget_non_negative", non_negative("total_budget_micros")),
            check("campaigns", "currency", currency_code()),
            check("campaigns", "name_not_empty", "length(name) > 0"),
        ]


class CampaignPlatformSetting(TimestampedModel):
    """Platform-specific settings of a campaign; one row per (campaign, platform)."""

    campaign = ForeignKeyField(Campaign, on_delete="CASCADE", backref="platform_settings",
                               index=False)
    platform = CharField(max_length=32, choices=choices(PLATFORMS))
    settings = JSONField(default=dict)

    class Meta:
        table_name = "campaign_platform_settings"
        indexes = ((("campaign", "platform"), True),)
        constraints = [
            check("campaign_platform_settings", "platform", one_of("platform", PLATFORMS)),
        ]


class Ad(TimestampedModel):
    """An ad and its creative, deleted with its campaign."""

    id = UUIDField(primary_key=True, default=uuid.uuid4)
    campaign = ForeignKeyField(Campaign, on_delete="CASCADE", backref="ads")
    campaign_id: uuid.UUID  # peewee's id accessor, declared for type checkers
    name = CharField(max_length=200)
    headline = CharField(max_length=300, default="")
    body = TextField(default="")
    call_to_action = CharField(max_length=64, default="learn_more")
    creative_type = CharField(max_length=16, default="image", choices=choices(CREATIVE_TYPES))
    media_url = CharField(max_length=2048, null=True)
    status = CharField(max_length=16, default="draft", choices=choices(AD_STATUSES))

    class Meta:
        table_name = "ads"
        constraints = [
            check("ads", "creative_type", one_of("creative_type", CREATIVE_TYPES)),
            check("ads", "status", one_of("status", AD_STATUSES)),
        ]


_FUNNEL = "clicks <= impressions AND conversions <= clicks"


class AdMetric(BaseModel):
    """One ad's figures for one day; unique per (ad, date)."""

    ad = ForeignKeyField(Ad, on_delete="CASCADE", backref="metrics", index=False)
    date = DateField()
    impressions = BigIntegerField(default=0)
    clicks = BigIntegerField(default=0)
    conversions = BigIntegerField(default=0)
    spend_micros = MoneyField(default=0)

    class Meta:
        table_name = "ad_metrics"
        indexes = ((("ad", "date"), True),)
        constraints = [
            check("ad_metrics", "non_negative",
                  non_negative("impressions", "clicks", "conversions", "spend_micros")),
            check("ad_metrics", "funnel", _FUNNEL),
        ]


class CampaignPerformance(BaseModel):
    """One campaign's figures for one day; unique per (campaign, date)."""

    campaign = ForeignKeyField(Campaign, on_delete="CASCADE", backref="performance",
                               index=False)
    date = DateField()
    impressions = BigIntegerField(default=0)
    clicks = BigIntegerField(default=0)
    conversions = BigIntegerField(default=0)
    spend_micros = MoneyField(default=0)
    revenue_micros = MoneyField(default=0)

    class Meta:
        table_name = "campaign_performance"
        indexes = ((("campaign", "date"), True),)
        constraints = [
            check("campaign_performance", "non_negative",
                  non_negative("impressions", "clicks", "conversions", "spend_micros",
                               "revenue_micros")),
            check("campaign_performance", "funnel", _FUNNEL),
        ]


class Budget(TimestampedModel):
    """A budget for a campaign over a period of days."""

    campaign = ForeignKeyField(Campaign, on_delete="CASCADE", backref="budgets")
    start_date = DateField()
    end_date = DateField()
    amount_micros = MoneyField()
    currency = CharField(max_length=3, default="USD")

    class Meta:
        table_name = "budgets"
        constraints = [
            check("budgets", "dates", "end_date >= start_date"),
            check("budgets", "amount_non_negative", non_negative("amount_micros")),
            check("budgets", "currency", currency_code()),
        ]


class SpendRecord(BaseModel):
    """Money spent on a campaign at an instant, with where the figure came from."""

    campaign = ForeignKeyField(Campaign, on_delete="CASCADE", backref="spend_records",
                               index=False)
    occurred_at = UTCDateTimeField()
    amount_micros = MoneyField()
    currency = CharField(max_length=3, default="USD")
    source = CharField(max_length=16, default="platform_api", choices=choices(SPEND_SOURCES))
    created_at = UTCDateTimeField(default=utcnow)

    class Meta:
        table_name = "spend_records"
        indexes = ((("campaign", "occurred_at"), False),)
        constraints = [
            check("spend_records", "amount_non_negative", non_negative("amount_micros")),
            check("spend_records", "currency", currency_code()),
            check("spend_records", "source", one_of("source", SPEND_SOURCES)),
        ]
