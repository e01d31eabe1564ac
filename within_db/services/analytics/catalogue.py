"""The catalogue saved queries draw on: datasets, their dimensions (with value kinds) and
metrics. Only these names ever reach SQL, as peewee nodes."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import peewee
from peewee import fn

from within_db.boundary import public_api
from within_db.fields import Codec, DateField, codec_of
from within_db.models.campaigns import Ad, AdMetric, Campaign, CampaignPerformance, SpendRecord
from within_db.models.ml_system import MLModel, ModelMetric, ModelVersion, PredictionLog

__all__ = ["DATASETS", "GRAINS", "MAX_LIMIT", "OPERATORS", "Dataset", "catalogue"]

GRAINS = ("day", "week", "month")
OPERATORS = ("eq", "in", "between", "gte", "lte")
MAX_LIMIT = 10_000


@dataclass
class Dataset:
    """A catalogue entry: base query, its date column, and what may be grouped and summed."""

    base: Callable[[], peewee.ModelSelect[Any]]
    date: peewee.Field
    dimensions: Mapping[str, peewee.Field]
    sums: Mapping[str, peewee.Field] = field(default_factory=dict)  # integer sums
    money: Mapping[str, peewee.Field] = field(default_factory=dict)  # sums of micros
    # name -> a function building the metric's expression
    other: Mapping[str, Callable[[], peewee.ColumnBase]] = field(default_factory=dict)


_DOUBLE = "DOUBLE PRECISION"


def _ratio(numerator: peewee.ColumnBase, denominator: peewee.ColumnBase) -> peewee.ColumnBase:
    # Both backends divide IEEE doubles; NULLIF turns a zero divisor into NULL, not an error.
    return numerator.cast(_DOUBLE) / fn.NULLIF(denominator, 0).cast(_DOUBLE)


def _datasets() -> dict[str, Dataset]:
    cp, am, sr, pl, mm = CampaignPerformance, AdMetric, SpendRecord, PredictionLog, ModelMetric
    perf_sums = {"impressions": cp.impressions, "clicks": cp.clicks,
                 "conversions": cp.conversions}
    ad_sums = {"impressions": am.impressions, "clicks": am.clicks, "conversions": am.conversions}
    return {
        "campaign_performance": Dataset(
            base=lambda: cp.select().join(Campaign, on=(cp.campaign == Campaign.id)),
            date=cp.date,
            dimensions={"campaign": cp.campaign, "platform": Campaign.platform,
                        "objective": Campaign.objective, "currency": Campaign.currency},
            sums=perf_sums, money={"spend": cp.spend_micros, "revenue": cp.revenue_micros},
            other={
                "ctr": lambda: _ratio(fn.SUM(cp.clicks), fn.SUM(cp.impressions)),
                "cvr": lambda: _ratio(fn.SUM(cp.conversions), fn.SUM(cp.clicks)),
                "cpa": lambda: _ratio(fn.SUM(cp.spend_micros), fn.SUM(cp.conversions)) / 1e6,
                "roas": lambda: _ratio(fn.SUM(cp.revenue_micros), fn.SUM(cp.spend_micros)),
            }),
        "ad_metrics": Dataset(
            base=lambda: (am.select().join(Ad, on=(am.ad == Ad.id))
                          .join(Campaign, on=(Ad.campaign == Campaign.id))),
            date=am.date,
            dimensions={"ad": am.ad, "campaign": Ad.campaign, "platform": Campaign.platform,
                        "creative_type": Ad.creative_type},
            sums=ad_sums, money={"spend": am.spend_micros},
            other={
                "ctr": lambda: _ratio(fn.SUM(am.clicks), fn.SUM(am.impressions)),
                "cvr": lambda: _ratio(fn.SUM(am.conversions), fn.SUM(am.clicks)),
                "cpa": lambda: _ratio(fn.SUM(am.spend_micros), fn.SUM(am.conversions)) / 1e6,
            }),
        "spend": Dataset(
            base=lambda: sr.select().join(Campaign, on=(sr.campaign == Campaign.id)),
            date=sr.occurred_at,
            dimensions={"campaign": sr.campaign, "platform": Campaign.platform,
                        "source": sr.source, "currency": sr.currency},
            money={"spend": sr.amount_micros},
            other={"records": lambda: fn.COUNT(sr.id)}),
        "prediction_logs": Dataset(
            base=lambda: (pl.select().join(ModelVersion, on=(pl.model_version == ModelVersion.id))
                          .join(MLModel, on=(ModelVersion.model == MLModel.id))),
            date=pl.created_at,
            dimensions={"model_version": pl.model_version, "model": MLModel.name,
                        "version": ModelVersion.version},
            other={"prediction_count": lambda: fn.COUNT(pl.id),
                   "mean_score": lambda: fn.AVG(pl.score),
                   "mean_latency_ms": lambda: fn.AVG(pl.latency_ms)}),
        "model_metrics": Dataset(
            base=lambda: (mm.select().join(ModelVersion, on=(mm.model_version == ModelVersion.id))
                          .join(MLModel, on=(ModelVersion.model == MLModel.id))),
            date=mm.recorded_at,
            dimensions={"model_version": mm.model_version, "model": MLModel.name,
                        "metric": mm.name, "split": mm.split},
            other={"mean_value": lambda: fn.AVG(mm.value), "min_value": lambda: fn.MIN(mm.value),
                   "max_value": lambda: fn.MAX(mm.value), "count": lambda: fn.COUNT(mm.id)}),
    }


DATASETS = _datasets()


@public_api
def catalogue() -> dict[str, dict[str, list[str]]]:
    """Return the valid dimensions and metrics of every dataset."""
    return {name: {"dimensions": ["date", *(f"date:{g}" for g in GRAINS), *ds.dimensions],
                   "metrics": [*ds.sums, *ds.money, *ds.other]}
            for name, ds in DATASETS.items()}


def dimension_codec(ds: Dataset, name: str) -> Codec:
    """Return the codec that types a dimension's filter values: its column's (a foreign key's
    target's), and the codec of date columns for ``date`` whatever the dataset's date column."""
    if name == "date":
        return DateField.codec
    return codec_of(ds.dimensions[name])
