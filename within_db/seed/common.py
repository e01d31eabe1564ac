"""What every seed generator shares: the seeded random sources, the reference instant, and
the scales. Nothing here reads the clock or ``uuid4()``, so a seed replays exactly."""

from __future__ import annotations

import datetime as dt
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from faker import Faker

from within_db.errors import ArgumentError

__all__ = ["COUNT_BOUNDS", "REFERENCE", "REFERENCE_DATE", "SCALES", "Scale", "SeedContext",
           "check_scale"]

REFERENCE = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
REFERENCE_DATE = REFERENCE.date()


@dataclass(frozen=True)
class Scale:
    users: int
    campaigns_per_user: int
    ads_per_campaign: int
    max_days: int
    models: int
    versions_per_model: int
    predictions: int
    saved_queries_per_user: int


SCALES = {
    "tiny": Scale(users=6, campaigns_per_user=2, ads_per_campaign=3, max_days=20, models=2,
                  versions_per_model=3, predictions=1_000, saved_queries_per_user=1),
    "small": Scale(users=25, campaigns_per_user=3, ads_per_campaign=4, max_days=45, models=4,
                   versions_per_model=4, predictions=20_000, saved_queries_per_user=2),
    "medium": Scale(users=200, campaigns_per_user=3, ads_per_campaign=5, max_days=90, models=8,
                    versions_per_model=5, predictions=200_000, saved_queries_per_user=2),
    "large": Scale(users=1_000, campaigns_per_user=3, ads_per_campaign=6, max_days=120,
                   models=12, versions_per_model=6, predictions=1_000_000,
                   saved_queries_per_user=2),
}


# (least, most) of each count; the generators need the least, the most keeps a typo from
# running for hours. MAX_ROWS bounds the product (daily ad metrics dominate).
COUNT_BOUNDS = {
    "users": (1, 100_000),
    "campaigns_per_user": (0, 1_000),
    "ads_per_campaign": (0, 1_000),
    "max_days": (3, 3_650),
    "models": (0, 10_000),
    "versions_per_model": (2, 1_000),
    "predictions": (0, 50_000_000),
    "saved_queries_per_user": (0, 8),  # one per distinct query in seed.analytics.QUERIES
}
WHY_LEAST = {"users": "the first user is the admin", "max_days": "a campaign runs 3 days or more",
             "versions_per_model": "each model gets a production and a staging version"}
MAX_ROWS = 50_000_000


def check_scale(scale: Scale) -> None:
    """Raise ArgumentError naming the first count out of its bounds, or a too-large total."""
    for name, (least, most) in COUNT_BOUNDS.items():
        value = getattr(scale, name)
        if not least <= value <= most:
            why = f" ({WHY_LEAST[name]})" if name in WHY_LEAST and value < least else ""
            raise ArgumentError(f"--count {name}={value} is out of range: expected {least:,} "
                                f"to {most:,}{why}")
    metrics = scale.users * scale.campaigns_per_user * scale.ads_per_campaign * scale.max_days
    if metrics + scale.predictions > MAX_ROWS:
        raise ArgumentError(
            f"these counts would write up to {metrics + scale.predictions:,} rows (more than "
            f"{MAX_ROWS:,}); lower users, campaigns_per_user, ads_per_campaign or max_days")


@dataclass
class SeedContext:
    """The seeded random sources and what generators hand to each other."""

    seed: int
    scale: Scale
    progress: Callable[[str, int], object]
    rng: random.Random = field(init=False)
    fake: Faker = field(init=False)
    suffix: str = ""

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.fake = Faker("en_US")
        self.fake.seed_instance(self.seed)

    def uuid(self) -> uuid.UUID:
        return uuid.UUID(int=self.rng.getrandbits(128), version=4)

    def instant(self, days_back_max: float, days_back_min: float = 0.0) -> dt.datetime:
        """A deterministic instant between the given numbers of days before REFERENCE."""
        seconds = self.rng.uniform(days_back_min * 86400, days_back_max * 86400)
        return (REFERENCE - dt.timedelta(seconds=int(seconds))).replace(microsecond=0)

    def hexid(self, nbytes: int = 16) -> str:
        return f"{self.rng.getrandbits(nbytes * 8):0{nbytes * 2}x}"
