"""Deterministic synthetic data for all four domains: ``run_seed()`` and the SCALES.

The whole seed runs in one transaction after the migrations: an interruption leaves the
database as it was. The same seed and scale give the same rows on any backend.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable

from within_db import migrate
from within_db.db import Backend
from within_db.errors import ArgumentError, ValidationError
from within_db.models import ALL_MODELS
from within_db.seed.analytics import seed_analytics
from within_db.seed.campaigns import seed_campaigns
from within_db.seed.common import SCALES, Scale, SeedContext, check_scale
from within_db.seed.ml import seed_ml
from within_db.seed.users import seed_users

__all__ = ["DEFAULT_SEED", "SCALES", "Scale", "run_seed"]

DEFAULT_SEED = 20260101
SEED_LOCK_KEY = 0x73656564  # "seed"


def _counts(db: Backend) -> dict[str, int]:
    return {m._meta.table_name: m.select().count() for m in ALL_MODELS}


def run_seed(db: Backend, scale: str | Scale = "small", seed: int = DEFAULT_SEED,
             reset: bool = False, append: bool = False, overrides: dict[str, int] | None = None,
             progress: Callable[[str, int], object] | None = None,
             on_step: Callable[[str, str], object] | None = None) -> dict:
    """Migrate ``db``, then fill it; return ``{"tables": {table: rows}, "seconds": ...}``.

    Refuses (ValidationError) a database that already holds data unless ``reset`` (drop and
    rebuild the schema first) or ``append`` (add more, with fresh ids) is given.
    ``on_step(name, direction)`` follows each migration the seed applies or reverts.
    """
    if reset and append:
        raise ArgumentError("--reset and --append exclude each other")
    chosen = SCALES[scale] if isinstance(scale, str) else scale
    if overrides:
        unknown = set(overrides) - {f.name for f in dataclasses.fields(Scale)}
        if unknown:
            raise ArgumentError(f"unknown counts: {', '.join(sorted(unknown))}; valid: "
                                  f"{', '.join(f.name for f in dataclasses.fields(Scale))}")
        chosen = dataclasses.replace(chosen, **overrides)
    check_scale(chosen)
    started = time.perf_counter()
    if reset:
        with db.connection_context():
            tables = set(db.table_names())
        if migrate.HISTORY_TABLE in tables and migrate.head(db):
            migrate.downgrade(db, target=migrate.status(db)[0].name, on_step=on_step)
    migrate.upgrade(db, on_step=on_step)
    with db.connection_context():
        # One seed at a time: a second run waits here, then finds the first one's rows.
        with db.serialised(SEED_LOCK_KEY):
            before = _counts(db)
            existing = before["users"]
            if existing and not append:
                raise ValidationError(
                    f"the database already holds data ({existing} users), perhaps from a "
                    "seed that ran at the same time; pass --reset to replace it or --append "
                    "to add to it")
            ctx = SeedContext(_derive(seed, existing), chosen, progress or (lambda *_: None))
            ctx.suffix = f"+{existing}" if existing else ""
            users = seed_users(ctx)
            ad_ids = seed_campaigns(ctx, users)
            seed_ml(ctx, users, ad_ids)
            seed_analytics(ctx, users)
        totals = _counts(db)
    added = {t: n - before[t] for t, n in totals.items() if n != before[t]}
    return {"tables": totals, "added": added,
            "seconds": round(time.perf_counter() - started, 2)}


def _derive(seed: int, existing: int) -> int:
    if not existing:
        return seed
    return int.from_bytes(hashlib.sha256(f"{seed}:{existing}".encode()).digest()[:8], "big")
