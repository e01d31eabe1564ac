"""What every seed generator shares: the seeded random sources, the reference instant, and
the scales. Nothing here reads the clock or ``uuid4()``, so a seed replays exactly."""

from __future__ import annotations

import datetime as dt
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from faker import Faker

__all__ = ["REFERENCE", "REFERENCE_DATE", "SCALES", "Scale", "SeedContext"]

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
