"""Seed users with profiles, Argon2id credentials, roles, tokens and their audit events."""

from __future__ import annotations

import datetime as dt
import re

from within_db.models.users import User
from within_db.seed.common import REFERENCE, SeedContext
from within_db.services import users as svc
from within_db.services.audit import record_event

__all__ = ["DEMO_PASSWORD", "ROLES", "seed_users"]

ROLES = {
    "admin": ["users.manage", "campaigns.view", "campaigns.view_all", "campaigns.edit",
              "campaigns.edit_all", "models.train", "models.deploy", "predictions.view",
              "analytics.run_any", "analytics.share"],
    "marketer": ["campaigns.view", "campaigns.edit", "analytics.share"],
    "data_scientist": ["campaigns.view", "models.train", "models.deploy", "predictions.view",
                       "analytics.run_any"],
    "analyst": ["campaigns.view", "campaigns.view_all", "analytics.share"],
}
# Hashing costs ~20 ms a user at OWASP parameters; a small pool of real hashes is reused.
PASSWORD_POOL = 4
DEMO_PASSWORD = "correct horse battery staple"


def seed_users(ctx: SeedContext) -> list[User]:
    """Create the roles and users; return the users, the first one a superuser."""
    fake, rng = ctx.fake, ctx.rng
    if not ctx.suffix:
        for name, perms in ROLES.items():
            svc.create_role(name, perms, description=f"{name.replace('_', ' ')} role",
                            now=REFERENCE)
    hashes = [svc.hash_password(f"{DEMO_PASSWORD} {i}") for i in range(PASSWORD_POOL)]
    users: list[User] = []
    for i in range(ctx.scale.users):
        first, last = fake.first_name(), fake.last_name()
        domain = fake.free_email_domain() if rng.random() < 0.3 else fake.domain_name()
        local = re.sub(r"[^a-z0-9.]", "", f"{first}.{last}".lower())
        email = f"{local}{i}{ctx.suffix}@{domain}"
        created = ctx.instant(400, 200)
        user = svc.create_user(
            email, password_hash=hashes[i % PASSWORD_POOL], full_name=f"{first} {last}",
            is_superuser=(i == 0 and not ctx.suffix), is_active=rng.random() > 0.08,
            user_id=ctx.uuid(), created_at=created,
            profile={"company": fake.company(), "timezone": fake.timezone(),
                     "locale": rng.choice(["en_US", "en_GB", "de_DE", "fr_FR", "es_ES"]),
                     "preferences": {"theme": rng.choice(["light", "dark"]),
                                     "weekly_digest": rng.random() < 0.5}})
        role = "admin" if i == 0 else rng.choice(list(ROLES))
        svc.grant_role(user, role, granted_by=users[0] if users else None,
                       at=created + dt.timedelta(minutes=5))
        _security_events(ctx, user, created)
        users.append(user)
        ctx.progress("users", 1)
    return users


def _security_events(ctx: SeedContext, user: User, created: dt.datetime) -> None:
    rng = ctx.rng
    ip = ctx.fake.ipv4_public()
    when = created + dt.timedelta(hours=1)
    for _ in range(rng.randint(1, 3)):
        if rng.random() < 0.2:
            record_event(None, "login.failure", target=user, ip=ip, created_at=when,
                         metadata={"reason": "wrong_password"})
        record_event(user, "login.success", target=user, ip=ip, created_at=when)
        when += dt.timedelta(days=rng.randint(1, 30), minutes=rng.randint(0, 600))
    if rng.random() < 0.5:
        svc.issue_token(user, "api_key", name="batch scoring", now=when)
    if rng.random() < 0.2:
        record_event(user, "password.changed", target=user, created_at=when)
    User.update(last_login_at=when).where(User.id == user.id).execute()
