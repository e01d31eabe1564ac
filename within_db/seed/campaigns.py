"""Seed campaigns with platform settings, ads, daily ad metrics and campaign performance
(the sum of its ads), monthly budgets and daily spend, all coherent: clicks <= impressions,
conversions <= clicks, spend within budget, days within the campaign's dates."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

from within_db.batch import bulk_insert
from within_db.models.campaigns import (
    AD_STATUSES,
    CREATIVE_TYPES,
    OBJECTIVES,
    PLATFORMS,
    Ad,
    AdMetric,
    Budget,
    Campaign,
    CampaignPerformance,
    CampaignPlatformSetting,
    SpendRecord,
)
from within_db.models.users import User
from within_db.seed.common import REFERENCE_DATE, SeedContext

__all__ = ["seed_campaigns"]

CURRENCIES = ("USD", "USD", "USD", "EUR", "GBP")
CTAS = ("learn_more", "shop_now", "sign_up", "download", "get_offer", "book_now")
MICROS = 1_000_000


def _end_of_month(day: dt.date) -> dt.date:
    nxt = (day.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    return nxt - dt.timedelta(days=1)


def seed_campaigns(ctx: SeedContext, users: list[User]) -> list[uuid.UUID]:
    """Create every user's campaigns and their children; return the ads' ids."""
    fake, rng, scale = ctx.fake, ctx.rng, ctx.scale
    campaigns: list[dict[str, Any]] = []
    settings: list[dict[str, Any]] = []
    ads: list[dict[str, Any]] = []
    budgets: list[dict[str, Any]] = []
    metrics: list[tuple[Any, ...]] = []
    performance: list[tuple[Any, ...]] = []
    spend: list[tuple[Any, ...]] = []
    for owner in users:
        for _ in range(scale.campaigns_per_user):
            campaign_id = ctx.uuid()
            days = rng.randint(max(3, scale.max_days // 3), scale.max_days)
            start = REFERENCE_DATE - dt.timedelta(days=rng.randint(days // 2, days + 60))
            end = start + dt.timedelta(days=days - 1)
            last_day = min(end, REFERENCE_DATE - dt.timedelta(days=1))
            status = "completed" if end < REFERENCE_DATE else rng.choice(["active", "paused"])
            platform = rng.choice(PLATFORMS)
            currency = rng.choice(CURRENCIES)
            created = dt.datetime.combine(start - dt.timedelta(days=rng.randint(1, 14)),
                                          dt.time(rng.randint(8, 18), rng.randint(0, 59)),
                                          dt.UTC)
            cpc = rng.uniform(0.2, 2.5)
            ad_ids = []
            for _ in range(scale.ads_per_campaign):
                ad_id = ctx.uuid()
                ad_ids.append(ad_id)
                ads.append({
                    "id": ad_id, "campaign": campaign_id, "name": fake.bs().title()[:200],
                    "headline": fake.catch_phrase()[:300], "body": fake.paragraph(2),
                    "call_to_action": rng.choice(CTAS),
                    "creative_type": rng.choice(CREATIVE_TYPES),
                    "media_url": f"https://cdn.example.com/{ctx.hexid(8)}.jpg",
                    "status": "archived" if status == "completed" else rng.choice(AD_STATUSES),
                    "created_at": created, "updated_at": created})
            total_spend = 0
            day = start
            while day <= last_day:
                day_imp = day_clk = day_conv = day_spend = day_rev = 0
                for ad_id in ad_ids:
                    impressions = int(rng.lognormvariate(7.0, 0.8))
                    clicks = min(impressions, int(impressions * rng.uniform(0.002, 0.05)))
                    conversions = min(clicks, int(clicks * rng.uniform(0.0, 0.15)))
                    spend_micros = int(clicks * cpc * MICROS)
                    revenue = conversions * int(rng.uniform(20, 120) * MICROS)
                    metrics.append((ad_id, day, impressions, clicks, conversions,
                                    Decimal(spend_micros).scaleb(-6)))
                    day_imp += impressions
                    day_clk += clicks
                    day_conv += conversions
                    day_spend += spend_micros
                    day_rev += revenue
                performance.append((campaign_id, day, day_imp, day_clk, day_conv,
                                    Decimal(day_spend).scaleb(-6), Decimal(day_rev).scaleb(-6)))
                if day_spend:
                    at = dt.datetime.combine(day, dt.time(23, 0), dt.UTC)
                    spend.append((campaign_id, at, Decimal(day_spend).scaleb(-6), currency,
                                  "platform_api", at))
                total_spend += day_spend
                day += dt.timedelta(days=1)
            # the budget covers the spend with headroom, split over calendar months
            total_budget = int(total_spend * rng.uniform(1.1, 1.5)) + 100 * MICROS
            months, cursor = [], start
            while cursor <= end:
                months.append((cursor, min(_end_of_month(cursor), end)))
                cursor = _end_of_month(cursor) + dt.timedelta(days=1)
            share = total_budget // len(months)
            for i, (lo, hi) in enumerate(months):
                amount = share if i < len(months) - 1 else total_budget - share * i
                budgets.append({"campaign": campaign_id, "start_date": lo, "end_date": hi,
                                "amount_micros": Decimal(amount).scaleb(-6),
                                "currency": currency, "created_at": created,
                                "updated_at": created})
            campaigns.append({
                "id": campaign_id, "owner": owner.id,
                "name": f"{fake.catch_phrase()} {start:%b %Y}"[:200],
                "objective": rng.choice(OBJECTIVES), "platform": platform, "status": status,
                "start_date": start, "end_date": end,
                "total_budget_micros": Decimal(total_budget).scaleb(-6), "currency": currency,
                "metadata": {"utm_campaign": fake.slug(), "region": fake.country_code(),
                             "audience": rng.choice(["prospecting", "retargeting", "lookalike"])},
                "created_at": created, "updated_at": created})
            settings.append({"campaign": campaign_id, "platform": platform,
                             "settings": {"bid_strategy": rng.choice(["max_clicks", "target_cpa",
                                                                      "target_roas"]),
                                          "daily_cap": round(cpc * 200, 2)},
                             "created_at": created, "updated_at": created})
        ctx.progress("campaigns", 1)
    bulk_insert(Campaign, campaigns)
    bulk_insert(CampaignPlatformSetting, settings)
    bulk_insert(Ad, ads)
    bulk_insert(AdMetric, metrics,
                fields=["ad", "date", "impressions", "clicks", "conversions", "spend_micros"])
    bulk_insert(CampaignPerformance, performance,
                fields=["campaign", "date", "impressions", "clicks", "conversions",
                        "spend_micros", "revenue_micros"])
    bulk_insert(Budget, budgets)
    bulk_insert(SpendRecord, spend, fields=["campaign", "occurred_at", "amount_micros",
                                            "currency", "source", "created_at"])
    return [a["id"] for a in ads]

