"""Accounts, passwords, tokens and role-based permissions.

Passwords are stored only as Argon2id hashes and tokens only as SHA-256 digests; every
security event goes to the audit chain (``services.audit``). No message or log line carries a
password, token, hash or email.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import secrets
import unicodedata
import uuid
from collections.abc import Iterable

import peewee
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from within_db.db import database, write_transaction
from within_db.errors import NotFoundError, ValidationError
from within_db.fields import normalise_email, utcnow
from within_db.integrity import conflict_on
from within_db.models.users import (
    EMAIL_MAX_LENGTH,
    TOKEN_KINDS,
    AccessToken,
    Credential,
    Permission,
    Role,
    RolePermission,
    User,
    UserProfile,
    UserRole,
)
from within_db.services.audit import record_event

__all__ = [
    "PASSWORD_MAX_LENGTH", "PASSWORD_MIN_LENGTH", "TOKEN_TTL", "authenticate", "create_role",
    "create_user", "ensure_permission", "find_user", "grant_role", "has_permission",
    "hash_password", "issue_token", "permissions_of", "revoke_all", "revoke_role", "revoke_token",
    "role_names", "set_password", "token_digest", "validate_email", "verify_token",
]

PASSWORD_MIN_LENGTH = 12
PASSWORD_MAX_LENGTH = 1024
# OWASP Password Storage Cheat Sheet: Argon2id, m=19 MiB, t=2, p=1.
HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
TOKEN_BYTES = 32  # 256 bits of entropy
TOKEN_TTL = {"session": dt.timedelta(hours=12), "api_key": dt.timedelta(days=90)}
TOKEN_PREFIX = {"session": "wdbs_", "api_key": "wdbk_"}
VISIBLE_PREFIX = 12


def validate_email(email: str) -> str:
    """Return the normalised email, or raise ValidationError saying what is wrong."""
    if not isinstance(email, str) or not email.strip():
        raise ValidationError("email is empty")
    email = normalise_email(email)
    if len(email) > EMAIL_MAX_LENGTH:
        raise ValidationError(f"email is longer than {EMAIL_MAX_LENGTH} characters")
    local, at, domain = email.rpartition("@")
    if not at or not local or not domain:
        raise ValidationError("email must look like name@domain")
    if any(ch.isspace() for ch in email) or "." not in domain.strip("."):
        raise ValidationError("email must look like name@domain, without spaces")
    return email


def _normalise_password(password: str) -> str:
    if not isinstance(password, str) or not password:
        raise ValidationError("password is empty")
    password = unicodedata.normalize("NFKC", password)
    if len(password) < PASSWORD_MIN_LENGTH:
        raise ValidationError(f"password must be at least {PASSWORD_MIN_LENGTH} characters")
    if len(password) > PASSWORD_MAX_LENGTH:
        raise ValidationError(f"password must be at most {PASSWORD_MAX_LENGTH} characters")
    return password


def hash_password(password: str) -> str:
    """Return the Argon2id hash of a valid password (NFKC-normalised first)."""
    return HASHER.hash(_normalise_password(password))


@functools.cache
def _dummy_hash() -> str:
    # Verified against for unknown emails so they cost the same work as known ones.
    return HASHER.hash(secrets.token_urlsafe(24))


def create_user(email: str, password: str | None = None, *, full_name: str = "",
                is_superuser: bool = False, is_active: bool = True,
                password_hash: str | None = None, profile: dict | None = None,
                actor: User | None = None, user_id: uuid.UUID | None = None,
                created_at: dt.datetime | None = None) -> User:
    """Create a user with a profile and an Argon2id credential, in one transaction.

    Pass ``password`` (hashed here) or a ``password_hash`` made by ``hash_password``.
    Raises ValidationError for a bad email or password, ConflictError for a taken email.
    """
    email = validate_email(email)
    if password_hash is None:
        if password is None:
            raise ValidationError("password is empty")
        password_hash = hash_password(password)
    elif not password_hash.startswith("$argon2id$"):
        raise ValidationError("password_hash must be an Argon2id hash from hash_password()")
    extra = {"created_at": created_at, "updated_at": created_at} if created_at else {}
    with conflict_on("users_email", "a user with that email already exists"), \
            write_transaction():
        user = User.create(id=user_id or uuid.uuid4(), email=email, full_name=full_name,
                           is_superuser=is_superuser, is_active=is_active, **extra)
        UserProfile.create(user=user, display_name=full_name, **(profile or {}), **extra)
        Credential.create(user=user, password_hash=password_hash,
                          **({"changed_at": created_at} if created_at else {}))
        record_event(actor, "user.created", target=user, created_at=created_at)
    return user


def find_user(email_or_id: str | uuid.UUID) -> User:
    """Return the user with this id or email; raise NotFoundError otherwise."""
    try:
        user_id = uuid.UUID(str(email_or_id))
    except ValueError:
        user = User.get_or_none(User.email == normalise_email(str(email_or_id)))
    else:
        user = User.get_or_none(User.id == user_id)
    if user is None:
        raise NotFoundError("no user with that email or id; list users with "
                            "`within-db inspect rows users`")
    return user


def authenticate(email: str, password: str, ip: str | None = None) -> User | None:
    """Return the active user whose password matches, else None; records the attempt.

    Unknown emails cost one hash verification like known ones. An outdated hash is
    re-hashed on success; ``last_login_at`` is set.
    """
    valid: str | None
    try:
        valid = validate_email(email)
    except ValidationError:
        valid = None
    row = None
    if valid is not None:
        row = (User.select(User, Credential.password_hash, Credential.id.alias("cred_id"))
               .join(Credential, on=(Credential.user == User.id))
               .where(User.email == valid).objects().first())
    stored = row.password_hash if row is not None else _dummy_hash()
    ok: bool
    try:
        ok = HASHER.verify(stored, unicodedata.normalize("NFKC", password or ""))
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        ok = False
    with write_transaction():
        if row is None or not ok or not row.is_active:
            reason = ("unknown_email" if row is None else
                      "wrong_password" if not ok else "inactive")
            record_event(None, "login.failure", target=row, metadata={"reason": reason}, ip=ip)
            return None
        now = utcnow()
        if HASHER.check_needs_rehash(stored):
            (Credential.update(password_hash=HASHER.hash(unicodedata.normalize("NFKC", password)),
                               changed_at=now)
             .where(Credential.id == row.cred_id).execute())
        User.update(last_login_at=now, updated_at=now).where(User.id == row.id).execute()
        record_event(row, "login.success", target=row, ip=ip)
    user = User.get_by_id(row.id)
    return user


def set_password(user: User, new_password: str, actor: User | None = None) -> None:
    """Replace the user's password hash and revoke their session tokens."""
    new_hash = hash_password(new_password)
    with write_transaction():
        updated = (Credential.update(password_hash=new_hash, changed_at=utcnow())
                   .where(Credential.user == user.id).execute())
        if not updated:
            Credential.create(user=user, password_hash=new_hash)
        revoke_all(user, kind="session", actor=actor)
        record_event(actor or user, "password.changed", target=user)


# -- tokens ---------------------------------------------------------------------------------


def token_digest(raw: str) -> str:
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def issue_token(user: User, kind: str = "session", ttl: dt.timedelta | None = None,
                name: str = "", now: dt.datetime | None = None) -> tuple[str, AccessToken]:
    """Issue a token; return ``(raw_secret, row)``. The raw secret is not stored anywhere."""
    if kind not in TOKEN_KINDS:
        raise ValidationError(f"token kind must be one of {', '.join(TOKEN_KINDS)}")
    ttl = ttl if ttl is not None else TOKEN_TTL[kind]
    if ttl <= dt.timedelta(0):
        raise ValidationError("token ttl must be positive")
    raw = TOKEN_PREFIX[kind] + secrets.token_urlsafe(TOKEN_BYTES)
    now = now or utcnow()
    with write_transaction():
        token = AccessToken.create(user=user, token_hash=token_digest(raw), kind=kind,
                                   prefix=raw[:VISIBLE_PREFIX], name=name, created_at=now,
                                   expires_at=now + ttl)
        record_event(user, "token.issued", target=token, metadata={"kind": kind},
                     created_at=now)
    return raw, token


def verify_token(raw: str, ip: str | None = None) -> User | None:
    """Return the owner of a live token (unexpired, unrevoked, active user), else None."""
    if not isinstance(raw, str) or not raw:
        return None
    digest = token_digest(raw)
    now = utcnow()
    token = (AccessToken.select(AccessToken, User).join(User)
             .where(AccessToken.token_hash == digest, AccessToken.revoked_at.is_null(),
                    AccessToken.expires_at > now, User.is_active == True)  # noqa: E712
             .first())
    if token is None:
        return None
    with write_transaction():
        AccessToken.update(last_used_at=now).where(AccessToken.id == token.id).execute()
        record_event(token.user, "token.used", target=token, ip=ip)
    return token.user


def revoke_token(token: AccessToken | str, actor: User | None = None) -> bool:
    """Revoke a token (a row or its raw secret); return whether it was live."""
    where = (AccessToken.id == token.id if isinstance(token, AccessToken)
             else AccessToken.token_hash == token_digest(token))
    with write_transaction():
        row = AccessToken.get_or_none(where)
        if row is None or row.revoked_at is not None:
            return False
        AccessToken.update(revoked_at=utcnow()).where(AccessToken.id == row.id).execute()
        record_event(actor or row.user_id, "token.revoked", target=row)
    return True


def revoke_all(user: User, kind: str | None = None, actor: User | None = None) -> int:
    """Revoke every live token of ``user`` (optionally of one kind); return how many."""
    query = AccessToken.update(revoked_at=utcnow()).where(
        AccessToken.user == user.id, AccessToken.revoked_at.is_null())
    if kind is not None:
        query = query.where(AccessToken.kind == kind)
    with write_transaction():
        count = query.execute()
        if count:
            record_event(actor or user, "token.revoked", target=user,
                         metadata={"count": count, "kind": kind or "all"})
    return count


# -- roles and permissions ------------------------------------------------------------------


def ensure_permission(codename: str, description: str = "") -> Permission:
    """Return the permission with this codename, creating it if needed."""
    permission, _ = Permission.get_or_create(codename=codename,
                                             defaults={"description": description})
    return permission


def create_role(name: str, permissions: Iterable[str] = (), description: str = "",
                now: dt.datetime | None = None) -> Role:
    """Create a role holding ``permissions`` (codenames, created as needed)."""
    now = now or utcnow()
    with write_transaction():
        with conflict_on("roles_name", "a role with that name already exists"), \
                database.atomic():
            role = Role.create(name=name, description=description, created_at=now,
                               updated_at=now)
        for codename in permissions:
            RolePermission.create(role=role, permission=ensure_permission(codename))
    return role


def _role(role: Role | str) -> Role:
    if isinstance(role, Role):
        return role
    found = Role.get_or_none(Role.name == role)
    if found is None:
        raise NotFoundError("no role with that name")
    return found


def grant_role(user: User, role: Role | str, granted_by: User | None = None,
               at: dt.datetime | None = None) -> UserRole:
    """Give ``user`` a role (idempotent) and record it (``at`` defaults to now)."""
    role = _role(role)
    at = at or utcnow()
    with write_transaction():
        existing = UserRole.get_or_none(UserRole.user == user.id, UserRole.role == role.id)
        if existing is not None:
            return existing
        link = UserRole.create(user=user, role=role, granted_by=granted_by, granted_at=at)
        record_event(granted_by, "role.granted", target=user, metadata={"role": role.name},
                     created_at=at)
    return link


def revoke_role(user: User, role: Role | str, actor: User | None = None) -> bool:
    """Take a role from ``user``; return whether they had it."""
    role = _role(role)
    with write_transaction():
        removed = UserRole.delete().where(UserRole.user == user.id,
                                          UserRole.role == role.id).execute()
        if removed:
            record_event(actor, "role.revoked", target=user, metadata={"role": role.name})
    return bool(removed)


def has_permission(user: User, codename: str) -> bool:
    """Whether an active ``user`` holds ``codename`` (superusers hold all). One query."""
    through_roles = (UserRole.select(UserRole.id)
                     .join(RolePermission, on=(RolePermission.role == UserRole.role))
                     .join(Permission, on=(Permission.id == RolePermission.permission))
                     .where(UserRole.user == User.id, Permission.codename == codename))
    return (User.select(User.id)
            .where(User.id == user.id, User.is_active == True,  # noqa: E712
                   (User.is_superuser == True) | peewee.fn.EXISTS(through_roles))  # noqa: E712
            .exists())


def permissions_of(user: User) -> set[str]:
    """Return the codenames ``user`` holds (every permission for a superuser). One query."""
    if user.is_superuser:
        return {p.codename for p in Permission.select(Permission.codename)}
    query = (Permission.select(Permission.codename).distinct()
             .join(RolePermission, on=(RolePermission.permission == Permission.id))
             .join(UserRole, on=(UserRole.role == RolePermission.role))
             .where(UserRole.user == user.id))
    return {p.codename for p in query}


def role_names(user: User) -> list[str]:
    """Return the names of the user's roles, sorted."""
    query = (Role.select(Role.name).join(UserRole, on=(UserRole.role == Role.id))
             .where(UserRole.user == user.id).order_by(Role.name))
    return [r.name for r in query]
