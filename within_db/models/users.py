"""Users domain: accounts, profiles, credentials, roles and permissions, tokens, audit log.

Only hashes of secrets are stored. Password and token logic lives in ``services.users``.
"""

import uuid

from within_db.base import BaseModel, TimestampedModel, check, choices, one_of, separated_by
from within_db.fields import (
    BigAutoField,
    BooleanField,
    CharField,
    EmailField,
    ForeignKeyField,
    JSONField,
    TextField,
    UTCDateTimeField,
    UUIDField,
    utcnow,
)

__all__ = [
    "AccessToken", "AuditLog", "Credential", "EMAIL_MAX_LENGTH", "PASSWORD_ALGORITHMS",
    "Permission", "Role", "RolePermission", "TOKEN_KINDS", "User", "UserProfile", "UserRole",
]

TOKEN_KINDS = ("session", "api_key")
PASSWORD_ALGORITHMS = ("argon2id",)
EMAIL_MAX_LENGTH = 254


class User(TimestampedModel):
    """An account. The database keeps emails normalised (lower-case, trimmed) and unique."""

    id = UUIDField(primary_key=True, default=uuid.uuid4)
    email = EmailField(max_length=EMAIL_MAX_LENGTH, unique=True)
    full_name = CharField(max_length=200, default="")
    is_active = BooleanField(default=True)
    is_superuser = BooleanField(default=False)
    last_login_at = UTCDateTimeField(null=True)

    class Meta:
        table_name = "users"
        constraints = [
            check("users", "email_normalised",
                  "email = lower(trim(email)) AND " + separated_by("email", "@")),
        ]


class UserProfile(TimestampedModel):
    """One profile per user (UNIQUE user_id), deleted with the user."""

    user = ForeignKeyField(User, unique=True, on_delete="CASCADE", backref="+")
    display_name = CharField(max_length=200, default="")
    company = CharField(max_length=200, null=True)
    timezone = CharField(max_length=64, default="UTC")
    locale = CharField(max_length=16, default="en_US")
    preferences = JSONField(default=dict)

    class Meta:
        table_name = "user_profiles"


class Credential(BaseModel):
    """A user's password hash (never the password); one per user."""

    user = ForeignKeyField(User, unique=True, on_delete="CASCADE", backref="+")
    password_hash = CharField(max_length=255)
    algorithm = CharField(max_length=32, default="argon2id", choices=choices(PASSWORD_ALGORITHMS))
    changed_at = UTCDateTimeField(default=utcnow)

    class Meta:
        table_name = "credentials"
        private_fields = ("password_hash",)
        constraints = [
            check("credentials", "algorithm", one_of("algorithm", PASSWORD_ALGORITHMS)),
            check("credentials", "hash_not_empty", "length(password_hash) > 0"),
        ]


class Role(TimestampedModel):
    """A named set of permissions (``analyst``, ``admin``...)."""

    name = CharField(max_length=64, unique=True)
    description = TextField(default="")

    class Meta:
        table_name = "roles"
        constraints = [check("roles", "name_not_empty", "length(name) > 0")]


class Permission(BaseModel):
    """A dotted, lower-case codename such as ``campaigns.edit``; unique."""

    codename = CharField(max_length=100, unique=True)
    description = TextField(default="")

    class Meta:
        table_name = "permissions"
        constraints = [
            check("permissions", "codename_format",
                  "codename = lower(codename) AND " + separated_by("codename", ".")),
        ]


class RolePermission(BaseModel):
    """Grants a permission to a role; the pair is unique."""

    role = ForeignKeyField(Role, on_delete="CASCADE", backref="role_permissions")
    permission = ForeignKeyField(Permission, on_delete="CASCADE", backref="+")

    class Meta:
        table_name = "role_permissions"
        indexes = ((("role", "permission"), True),)


class UserRole(BaseModel):
    """Assigns a role to a user; the pair is unique."""

    user = ForeignKeyField(User, on_delete="CASCADE", backref="user_roles")
    role = ForeignKeyField(Role, on_delete="CASCADE", backref="+")
    granted_by = ForeignKeyField(User, null=True, on_delete="SET NULL", backref="+")
    granted_at = UTCDateTimeField(default=utcnow)

    class Meta:
        table_name = "user_roles"
        indexes = ((("user", "role"), True),)


class AccessToken(BaseModel):
    """A session token or API key, stored as the SHA-256 hex digest of the secret."""

    user = ForeignKeyField(User, on_delete="CASCADE", backref="access_tokens")
    user_id: uuid.UUID  # peewee's id accessor, declared for type checkers
    token_hash = CharField(max_length=64, unique=True)
    kind = CharField(max_length=16, choices=choices(TOKEN_KINDS))
    prefix = CharField(max_length=16)
    name = CharField(max_length=100, default="")
    created_at = UTCDateTimeField(default=utcnow)
    expires_at = UTCDateTimeField()
    revoked_at = UTCDateTimeField(null=True)
    last_used_at = UTCDateTimeField(null=True)

    class Meta:
        table_name = "access_tokens"
        private_fields = ("token_hash",)
        constraints = [
            check("access_tokens", "kind", one_of("kind", TOKEN_KINDS)),
            check("access_tokens", "hash_length", "length(token_hash) = 64"),
            check("access_tokens", "expiry_after_creation", "expires_at > created_at"),
        ]


class AuditLog(BaseModel):
    """An append-only security event in a hash chain.

    ``row_hash`` covers the row and ``prev_hash``; triggers (migration 0002) refuse UPDATE and
    DELETE. The actor is RESTRICTed: a user with history is deactivated, not deleted.
    """

    id = BigAutoField()
    actor = ForeignKeyField(User, null=True, on_delete="RESTRICT", backref="+")
    actor_id: uuid.UUID | None  # peewee's id accessor, declared for type checkers
    action = CharField(max_length=64)
    target_type = CharField(max_length=64, null=True)
    target_id = CharField(max_length=64, null=True)
    metadata = JSONField(default=dict)
    ip = CharField(max_length=45, null=True)
    created_at = UTCDateTimeField(default=utcnow)
    prev_hash = CharField(max_length=64)
    row_hash = CharField(max_length=64, unique=True)

    class Meta:
        table_name = "audit_logs"
        indexes = ((("actor", "created_at"), False),)
        constraints = [
            check("audit_logs", "action_not_empty", "length(action) > 0"),
            check("audit_logs", "hash_length",
                  "length(prev_hash) = 64 AND length(row_hash) = 64"),
        ]
