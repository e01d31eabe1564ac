"""Accounts, passwords, tokens and role-based permissions.

Passwords are stored only as Argon2id hashes and tokens only as SHA-256 digests; every
security event goes to the audit chain (``services.audit``). No message or log line carries a
password, token, hash or email.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import ipaddress
import re
import secrets
import unicodedata
import uuid
from collections.abc import Sequence
from typing import Any

import email_validator
import peewee
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from within_db import boundary as check
from within_db.boundary import public_api
from within_db.db import database, write_transaction
from within_db.errors import NotFoundError, ValidationError
from within_db.fields import utcnow
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
# Scripts whose letters pass for each other (o/о/ο): one address may use only one of them.
CONFUSABLE_SCRIPTS = ("LATIN", "CYRILLIC", "GREEK")
_PROFILE_KEYS = ("display_name", "company", "timezone", "locale", "preferences")
# The PHC string argon2-cffi writes: parameters, then base64 salt and hash without padding.
_ARGON2ID_HASH = re.compile(r"\$argon2id\$v=[0-9]+\$m=[0-9]+,t=[0-9]+,p=[0-9]+"
                            r"\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+\Z")


def _scripts(part: str) -> set[str]:
    names = (unicodedata.name(ch, "") for ch in part if unicodedata.category(ch)[0] == "L")
    return {n.split(" ", 1)[0] for n in names} & set(CONFUSABLE_SCRIPTS)


@public_api
def validate_email(email: str) -> str:
    """Return the normalised email, or raise ValidationError saying what is wrong.

    NFKC, then email-validator's syntax rules and normalisation (no deliverability check),
    then lower case. Refused besides: control and invisible characters, and a local part or
    domain label mixing Latin, Cyrillic or Greek letters (look-alike addresses).
    """
    if not isinstance(email, str) or not email.strip():
        raise ValidationError("email is empty")
    if len(email) > 4 * EMAIL_MAX_LENGTH:
        raise ValidationError(f"email is longer than {EMAIL_MAX_LENGTH} characters")
    email = unicodedata.normalize("NFKC", email).strip()
    check.text(email, "email", max_length=EMAIL_MAX_LENGTH)
    try:
        parsed = email_validator.validate_email(email, check_deliverability=False)
    except email_validator.EmailNotValidError as exc:
        raise ValidationError(f"email must look like name@domain: {exc}") from None
    normalised = parsed.normalized.lower()
    if len(normalised) > EMAIL_MAX_LENGTH:
        raise ValidationError(f"email is longer than {EMAIL_MAX_LENGTH} characters")
    local, _, domain = normalised.rpartition("@")
    for part in (local, *domain.split(".")):
        if len(_scripts(part)) > 1:
            raise ValidationError("email mixes Latin, Cyrillic or Greek letters in one part; "
                                  "look-alike addresses are refused")
    return normalised


def _normalise_password(password: object) -> str:
    if not isinstance(password, str) or not password:
        raise ValidationError("password is empty")
    if len(password) > 4 * PASSWORD_MAX_LENGTH:
        raise ValidationError(f"password must be at most {PASSWORD_MAX_LENGTH} characters")
    if "\x00" in password:
        raise ValidationError("password contains a NUL character")
    password = unicodedata.normalize("NFKC", password)
    if len(password) < PASSWORD_MIN_LENGTH:
        raise ValidationError(f"password must be at least {PASSWORD_MIN_LENGTH} characters")
    if len(password) > PASSWORD_MAX_LENGTH:
        raise ValidationError(f"password must be at most {PASSWORD_MAX_LENGTH} characters")
    return password


@public_api
def hash_password(password: str) -> str:
    """Return the Argon2id hash of a valid password (NFKC-normalised first)."""
    return HASHER.hash(_normalise_password(password))


@functools.cache
def _dummy_hash() -> str:
    # Verified against for unknown emails so they cost the same work as known ones.
    return HASHER.hash(secrets.token_urlsafe(24))


@public_api
def create_user(email: str, password: str | None = None, *, full_name: str = "",
                is_superuser: bool = False, is_active: bool = True,
                password_hash: str | None = None, profile: dict | None = None,
                actor: User | None = None, user_id: uuid.UUID | None = None,
                created_at: dt.datetime | None = None) -> User:
    """Create a user with a profile and an Argon2id credential, in one transaction.

    Pass ``password`` (hashed here) or a ``password_hash`` made by ``hash_password``.
    ``profile`` holds UserProfile fields (display_name, company, timezone, locale,
    preferences). Raises ValidationError for a bad argument, ConflictError for a taken email.
    """
    email = validate_email(email)
    check.text(full_name, "full_name", max_length=User.full_name.max_length, empty=True)
    # a model instance would pass the column's codec as its id: refuse it here
    check.flag(is_superuser, "User.is_superuser")
    check.flag(is_active, "User.is_active")
    fields = _profile(profile)
    check.optional_instance(actor, User, "actor")
    if user_id is not None:
        user_id = check.uuid_value(user_id, "user_id")
    check.optional_instant(created_at, "created_at")
    if password_hash is None:
        if password is None:
            raise ValidationError("password is empty")
        password_hash = hash_password(password)
    elif password is not None:
        raise ValidationError("pass password or password_hash, not both")
    elif not isinstance(password_hash, str) \
            or len(password_hash) > Credential.password_hash.max_length \
            or not _ARGON2ID_HASH.match(password_hash):
        raise ValidationError("password_hash must be an Argon2id hash from hash_password()")
    extra = {"created_at": created_at, "updated_at": created_at} if created_at else {}
    with conflict_on("users_email", "a user with that email already exists"), \
            write_transaction():
        user = User.create(id=user_id or uuid.uuid4(), email=email, full_name=full_name,
                           is_superuser=is_superuser, is_active=is_active, **extra)
        UserProfile.create(user=user, **{"display_name": full_name, **fields}, **extra)
        Credential.create(user=user, password_hash=password_hash,
                          **({"changed_at": created_at} if created_at else {}))
        record_event(actor, "user.created", target=user, created_at=created_at)
    return user


def _profile(profile: object) -> dict[str, Any]:
    fields = check.json_object(profile, "profile")
    unknown = set(fields) - set(_PROFILE_KEYS)
    if unknown:
        raise ValidationError(f"unknown profile fields: {', '.join(sorted(unknown))}; valid: "
                              f"{', '.join(_PROFILE_KEYS)}")
    for key, value in fields.items():
        if key == "preferences":
            check.json_object(value, "profile.preferences")
        elif not (key == "company" and value is None):
            check.text(value, f"profile.{key}", empty=key != "timezone",
                       max_length=getattr(UserProfile, key).max_length)
    return fields


@public_api
def find_user(email_or_id: str | uuid.UUID) -> User:
    """Return the user with this id or email; raise NotFoundError otherwise."""
    missing = NotFoundError("no user with that email or id; list users with "
                            "`within-db inspect rows users`")
    if isinstance(email_or_id, uuid.UUID):
        user = User.get_or_none(User.id == email_or_id)
    else:
        check.text(email_or_id, "email_or_id", max_length=4 * EMAIL_MAX_LENGTH)
        try:
            user = User.get_or_none(User.id == uuid.UUID(email_or_id))
        except ValueError:
            try:
                email = validate_email(email_or_id)
            except ValidationError:
                raise missing from None
            user = User.get_or_none(User.email == email)
    if user is None:
        raise missing
    return user


@public_api
def authenticate(email: str, password: str, ip: str | None = None) -> User | None:
    """Return the active user whose password matches, else None; records the attempt.

    A malformed email is a failed attempt like an unknown one; arguments of the wrong type,
    NUL characters and oversized values are refused (ValidationError) and not recorded.
    Unknown emails cost one hash verification like known ones. An outdated hash is
    re-hashed on success; ``last_login_at`` is set.
    """
    check.text(email, "email", max_length=4 * EMAIL_MAX_LENGTH, empty=True)
    check.text(password, "password", max_length=4 * PASSWORD_MAX_LENGTH, empty=True)
    _ip(ip)
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
        ok = HASHER.verify(stored, unicodedata.normalize("NFKC", password))
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


def _ip(ip: object) -> None:
    # checked before the work (a hash verification, a lookup) that the audit event would undo
    if ip is not None:
        text = check.text(ip, "ip", max_length=45)
        try:
            ipaddress.ip_address(text.strip())
        except ValueError:
            raise ValidationError("ip: not an IPv4 or IPv6 address") from None


@public_api
def set_password(user: User, new_password: str, actor: User | None = None) -> None:
    """Replace the user's password hash and revoke their session tokens."""
    check.instance(user, User, "user")
    check.optional_instance(actor, User, "actor")
    new_hash = hash_password(new_password)
    with write_transaction():
        updated = (Credential.update(password_hash=new_hash, changed_at=utcnow())
                   .where(Credential.user == user.id).execute())
        if not updated:
            Credential.create(user=user, password_hash=new_hash)
        revoke_all(user, kind="session", actor=actor)
        record_event(actor or user, "password.changed", target=user)


# -- tokens ---------------------------------------------------------------------------------


@public_api
def token_digest(raw: str) -> str:
    """Return the SHA-256 hex digest stored for a raw token."""
    if not isinstance(raw, str):
        raise ValidationError(f"a token must be text, not {type(raw).__name__}")
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()


@public_api
def issue_token(user: User, kind: str = "session", ttl: dt.timedelta | None = None,
                name: str = "", now: dt.datetime | None = None) -> tuple[str, AccessToken]:
    """Issue a token; return ``(raw_secret, row)``. The raw secret is not stored anywhere.

    ``ttl`` defaults per kind (12 hours for sessions, 90 days for API keys), at most 10 years.
    """
    check.instance(user, User, "user")
    check.choice(kind, "kind", TOKEN_KINDS)
    ttl = check.duration(ttl, "ttl") if ttl is not None else TOKEN_TTL[kind]
    check.text(name, "name", max_length=AccessToken.name.max_length, empty=True)
    now = check.optional_instant(now, "now") or utcnow()
    raw = TOKEN_PREFIX[kind] + secrets.token_urlsafe(TOKEN_BYTES)
    with write_transaction():
        token = AccessToken.create(user=user, token_hash=token_digest(raw), kind=kind,
                                   prefix=raw[:VISIBLE_PREFIX], name=name, created_at=now,
                                   expires_at=now + ttl)
        record_event(user, "token.issued", target=token, metadata={"kind": kind},
                     created_at=now)
    return raw, token


def _raw_token(raw: object) -> str | None:
    """A raw token as given by a client: None when it cannot be one (so it matches nothing)."""
    if not isinstance(raw, str) or not raw or len(raw) > 256 or "\x00" in raw:
        return None
    return raw


@public_api
def verify_token(raw: str, ip: str | None = None) -> User | None:
    """Return the owner of a live token (unexpired, unrevoked, active user), else None.

    Anything that cannot be a token (not text, empty, oversized) simply matches nothing.
    """
    _ip(ip)
    if _raw_token(raw) is None:
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


@public_api
def revoke_token(token: AccessToken | str, actor: User | None = None) -> bool:
    """Revoke a token (a row or its raw secret); return whether it was live."""
    check.optional_instance(actor, User, "actor")
    if isinstance(token, AccessToken):
        where = AccessToken.id == check.instance(token, AccessToken, "token").id
    elif isinstance(token, str):
        if _raw_token(token) is None:
            return False
        where = AccessToken.token_hash == token_digest(token)
    else:
        raise ValidationError(f"token must be a saved AccessToken or a raw token, not "
                              f"{type(token).__name__}")
    with write_transaction():
        row = AccessToken.get_or_none(where)
        if row is None or row.revoked_at is not None:
            return False
        AccessToken.update(revoked_at=utcnow()).where(AccessToken.id == row.id).execute()
        record_event(actor or row.user_id, "token.revoked", target=row)
    return True


@public_api
def revoke_all(user: User, kind: str | None = None, actor: User | None = None) -> int:
    """Revoke every live token of ``user`` (optionally of one kind); return how many."""
    check.instance(user, User, "user")
    if kind is not None:
        check.choice(kind, "kind", TOKEN_KINDS)
    check.optional_instance(actor, User, "actor")
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


def _codename(value: object, name: str = "codename") -> str:
    codename = check.text(value, name, max_length=Permission.codename.max_length)
    parts = codename.split(".")
    if codename != codename.lower() or len(parts) < 2 or not all(
            p and p.replace("_", "").isalnum() and p.isascii() for p in parts):
        raise ValidationError(f"{name} must be dotted lower-case words such as "
                              "campaigns.edit")
    return codename


@public_api
def ensure_permission(codename: str, description: str = "", *,
                      actor: User | None = None) -> Permission:
    """Return the permission with this codename, creating it if needed.

    A creation is recorded as a ``permission.created`` audit event by ``actor``.
    """
    _codename(codename)
    check.text(description, "description", empty=True, multiline=True)
    check.optional_instance(actor, User, "actor")
    return _ensure_permission(codename, description, actor)


def _ensure_permission(codename: str, description: str, actor: User | None,
                       now: dt.datetime | None = None) -> Permission:
    with write_transaction():
        permission, created = Permission.get_or_create(codename=codename,
                                                       defaults={"description": description})
        if created:
            record_event(actor, "permission.created", target=permission,
                         metadata={"codename": codename}, created_at=now)
    return permission


@public_api
def create_role(name: str, permissions: Sequence[str] = (), description: str = "",
                now: dt.datetime | None = None, *, actor: User | None = None) -> Role:
    """Create a role holding ``permissions`` (codenames, created as needed).

    Recorded as a ``role.created`` audit event by ``actor`` naming the role and its
    permissions (and ``permission.created`` for each new permission), all at ``now``.
    """
    check.text(name, "name", max_length=Role.name.max_length)
    codenames = list(dict.fromkeys(check.text_list(permissions, "permissions", item=_codename)))
    check.text(description, "description", empty=True, multiline=True)
    now = check.optional_instant(now, "now") or utcnow()
    check.optional_instance(actor, User, "actor")
    with write_transaction():
        with conflict_on("roles_name", "a role with that name already exists"), \
                database.atomic():
            role = Role.create(name=name, description=description, created_at=now,
                               updated_at=now)
        for codename in codenames:
            RolePermission.create(role=role,
                                  permission=_ensure_permission(codename, "", actor, now))
        record_event(actor, "role.created", target=role,
                     metadata={"role": name, "permissions": codenames}, created_at=now)
    return role


def _role(role: object) -> Role:
    if isinstance(role, Role):
        return check.instance(role, Role, "role")
    check.text(role, "role", max_length=Role.name.max_length)
    found = Role.get_or_none(Role.name == role)
    if found is None:
        raise NotFoundError("no role with that name")
    return found


@public_api
def grant_role(user: User, role: Role | str, granted_by: User | None = None,
               at: dt.datetime | None = None) -> UserRole:
    """Give ``user`` a role (idempotent) and record it (``at`` defaults to now)."""
    check.instance(user, User, "user")
    check.optional_instance(granted_by, User, "granted_by")
    at = check.optional_instant(at, "at") or utcnow()
    role = _role(role)
    with write_transaction():
        existing = UserRole.get_or_none(UserRole.user == user.id, UserRole.role == role.id)
        if existing is not None:
            return existing
        link = UserRole.create(user=user, role=role, granted_by=granted_by, granted_at=at)
        record_event(granted_by, "role.granted", target=user, metadata={"role": role.name},
                     created_at=at)
    return link


@public_api
def revoke_role(user: User, role: Role | str, actor: User | None = None) -> bool:
    """Take a role from ``user``; return whether they had it."""
    check.instance(user, User, "user")
    check.optional_instance(actor, User, "actor")
    role = _role(role)
    with write_transaction():
        removed = UserRole.delete().where(UserRole.user == user.id,
                                          UserRole.role == role.id).execute()
        if removed:
            record_event(actor, "role.revoked", target=user, metadata={"role": role.name})
    return bool(removed)


@public_api
def has_permission(user: User, codename: str) -> bool:
    """Whether an active ``user`` holds ``codename`` (superusers hold all). One query."""
    check.instance(user, User, "user")
    check.text(codename, "codename", max_length=Permission.codename.max_length)
    through_roles = (UserRole.select(UserRole.id)
                     .join(RolePermission, on=(RolePermission.role == UserRole.role))
                     .join(Permission, on=(Permission.id == RolePermission.permission))
                     .where(UserRole.user == User.id, Permission.codename == codename))
    return (User.select(User.id)
            .where(User.id == user.id, User.is_active == True,  # noqa: E712
                   (User.is_superuser == True) | peewee.fn.EXISTS(through_roles))  # noqa: E712
            .exists())


@public_api
def permissions_of(user: User) -> set[str]:
    """Return the codenames ``user`` holds: every permission for a superuser, none while
    inactive. Read from the database, not from the instance. One query."""
    check.instance(user, User, "user")
    # the same rules as has_permission, over every permission at once
    active = User.select(User.id).where(User.id == user.id, User.is_active == True)  # noqa: E712
    superuser = active.where(User.is_superuser == True)  # noqa: E712
    through_roles = (UserRole.select(UserRole.id)
                     .join(RolePermission, on=(RolePermission.role == UserRole.role))
                     .where(UserRole.user == user.id,
                            RolePermission.permission == Permission.id))
    query = Permission.select(Permission.codename).where(
        peewee.fn.EXISTS(superuser) | (peewee.fn.EXISTS(active)
                                       & peewee.fn.EXISTS(through_roles)))
    return {p.codename for p in query}


@public_api
def role_names(user: User) -> list[str]:
    """Return the names of the user's roles, sorted."""
    check.instance(user, User, "user")
    query = (Role.select(Role.name).join(UserRole, on=(UserRole.role == Role.id))
             .where(UserRole.user == user.id).order_by(Role.name))
    return [r.name for r in query]
