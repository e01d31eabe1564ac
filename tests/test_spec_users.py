"""services.users specified: every limit on both sides, every security action's audit event
(action, actor, target, metadata), exact token expiry, RBAC, and no secret in any text."""

import contextlib
import datetime as dt
import hashlib
import json
import logging
import uuid

import pytest
from argon2 import PasswordHasher
from playhouse.test_utils import count_queries

from tests.helpers import make_user
from within_db.errors import ConflictError, NotFoundError, ValidationError, WithinDBError
from within_db.models.users import (
    AccessToken,
    AuditLog,
    Credential,
    Permission,
    Role,
    RolePermission,
    User,
    UserProfile,
    UserRole,
)
from within_db.services import users as svc
from within_db.services.audit import verify_audit_chain

UTC = dt.UTC
PASSWORD = "a sufficiently long passphrase"
T0 = dt.datetime(2026, 3, 1, 9, 30, 15, 123456, tzinfo=UTC)
# NFKC composes these four code points into one (U+1F8F), the largest shrink Unicode has
NAIVE = ": naive datetime refused: pass a timezone-aware datetime, e.g. datetime.now(timezone.utc)"
BAD_HASH = "password_hash must be an Argon2id hash from hash_password()"
DOTTED = " must be dotted lower-case words such as campaigns.edit"
ACTOR = uuid.UUID("7a1c2e3a-1111-4222-8333-444455556666")
FOUR_TO_ONE = "\u0391\u0314\u0342\u0345"


def _events(action=None):
    query = AuditLog.select().order_by(AuditLog.id)
    if action is not None:
        query = query.where(AuditLog.action == action)
    return list(query)


def _event(row):
    """An audit row as (action, actor id, target type, target id, metadata)."""
    return (row.action, row.actor_id, row.target_type, row.target_id, row.metadata)


def _counts():
    return tuple(m.select().count() for m in (User, UserProfile, Credential, AccessToken,
                                              AuditLog, Role, UserRole, Permission))


@contextlib.contextmanager
def refused(message, error=ValidationError):
    """Expect ``error`` with exactly ``message``: names, limits and advice are the contract."""
    with pytest.raises(error) as info:
        yield
    assert str(info.value) == message


@pytest.fixture
def clock(monkeypatch):
    """Set the instant services.users reads as now: ``clock(t)``."""
    def set_now(instant):
        monkeypatch.setattr(svc, "utcnow", lambda: instant)
    return set_now


# -- passwords -----------------------------------------------------------------------------------

@pytest.mark.parametrize("password", [
    "x" * svc.PASSWORD_MIN_LENGTH, "x" * svc.PASSWORD_MAX_LENGTH,
    FOUR_TO_ONE * svc.PASSWORD_MAX_LENGTH,  # 4,096 characters, 1,024 once normalised
], ids=["exactly-min", "exactly-max", "max-after-nfkc"])
def test_passwords_at_the_limits_are_accepted_and_verify(password):
    stored = svc.hash_password(password)
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    import unicodedata
    assert svc.HASHER.verify(stored, unicodedata.normalize("NFKC", password))


@pytest.mark.parametrize("password,message", [
    ("x" * (svc.PASSWORD_MIN_LENGTH - 1), "password must be at least 12 characters"),
    ("e\u0301" + "x" * 10, "password must be at least 12 characters"),  # 12 typed, 11 after NFKC
    ("x" * (svc.PASSWORD_MAX_LENGTH + 1), "password must be at most 1024 characters"),
    (FOUR_TO_ONE * svc.PASSWORD_MAX_LENGTH + "x", "password must be at most 1024 characters"),
    ("x" * (4 * svc.PASSWORD_MAX_LENGTH + 1), "password must be at most 1024 characters"),
    ("", "password is empty"), (None, "password is empty"),
    (123456789012345, "password is empty"), (b"a long enough password", "password is empty"),
    ("a long enough pass\x00word", "password contains a NUL character"),
])
def test_passwords_outside_the_limits_are_refused(password, message):
    with refused(message):
        svc.hash_password(password)


def test_a_refused_password_creates_nothing(db):
    before = _counts()
    with pytest.raises(ValidationError, match="at least 12"):
        svc.create_user("jane@example.com", "x" * 11)
    assert _counts() == before


# -- create_user ----------------------------------------------------------------------------------

def test_create_user_stores_every_argument_and_records_who_created_whom(db):
    admin = svc.create_user("admin@example.com", PASSWORD)
    user_id = uuid.UUID("0f1c2e3a-1111-4222-8333-444455556666")
    user = svc.create_user("Jane@Example.com", PASSWORD, full_name="Jane Doe",
                           is_superuser=True, is_active=False, actor=admin,
                           user_id=str(user_id), created_at=T0,
                           profile={"company": "ACME", "timezone": "Europe/Paris",
                                    "locale": "fr_FR", "preferences": {"theme": "dark"}})
    assert user.id == user_id
    stored = User.get_by_id(user_id)
    assert (stored.email, stored.full_name, stored.is_superuser, stored.is_active) == \
        ("jane@example.com", "Jane Doe", True, False)
    assert stored.created_at == stored.updated_at == T0
    profile = UserProfile.get(UserProfile.user == user_id)
    assert (profile.display_name, profile.company, profile.timezone, profile.locale,
            profile.preferences) == ("Jane Doe", "ACME", "Europe/Paris", "fr_FR",
                                     {"theme": "dark"})
    assert profile.created_at == profile.updated_at == T0
    credential = Credential.get(Credential.user == user_id)
    assert credential.changed_at == T0
    assert svc.HASHER.verify(credential.password_hash, PASSWORD)
    event = _events("user.created")[-1]
    assert _event(event) == ("user.created", admin.id, "users", str(user_id), {})
    assert event.created_at == T0


def test_create_user_defaults(db):
    before = dt.datetime.now(UTC)
    user = svc.create_user("jane@example.com", PASSWORD)
    stored = User.get_by_id(user.id)
    assert (stored.full_name, stored.is_superuser, stored.is_active) == ("", False, True)
    assert stored.created_at >= before
    profile = UserProfile.get(UserProfile.user == user.id)
    assert (profile.display_name, profile.company, profile.timezone, profile.locale,
            profile.preferences) == ("", None, "UTC", "en_US", {})
    assert Credential.get(Credential.user == user.id).changed_at >= before
    event = _events("user.created")[0]
    assert _event(event) == ("user.created", None, "users", str(user.id), {})
    assert event.created_at >= before


def test_a_profile_display_name_overrides_the_full_name(db):
    user = svc.create_user("jane@example.com", PASSWORD, full_name="Jane Doe",
                           profile={"display_name": "JD", "company": None})
    profile = UserProfile.get(UserProfile.user == user.id)
    assert (profile.display_name, profile.company) == ("JD", None)


def test_create_user_takes_a_hash_from_hash_password(db):
    hashed = svc.hash_password(PASSWORD)
    user = svc.create_user("jane@example.com", password_hash=hashed)
    assert Credential.get(Credential.user == user.id).password_hash == hashed
    assert svc.authenticate("jane@example.com", PASSWORD).id == user.id
    # the column's limit exactly: accepted as it is (verified only at login)
    prefix = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$"
    longest = prefix + "A" * (Credential.password_hash.max_length - len(prefix))
    other = svc.create_user("max@example.com", password_hash=longest)
    assert Credential.get(Credential.user == other.id).password_hash == longest


def _create_user_misuse():
    hashed = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"
    return [
        (dict(password=None), "password is empty"),
        (dict(password=PASSWORD, password_hash=hashed), "pass password or password_hash, not both"),
        (dict(password=None, password_hash="$argon2i$v=19$m=8,t=1,p=1$abc$def"), BAD_HASH),
        (dict(password=None, password_hash=12345), BAD_HASH),
        (dict(password=None, password_hash=hashed + "A" * (256 - len(hashed))), BAD_HASH),
        (dict(password=None, password_hash="$argon2id$garbage"), BAD_HASH),
        (dict(password=None, password_hash=hashed + "\n"), BAD_HASH),
        (dict(password=None, password_hash=hashed.replace("m=19456", "m=x")), BAD_HASH),
        (dict(password=None, password_hash=hashed + "$extra"), BAD_HASH),
        (dict(full_name="x" * 201), "full_name is longer than 200 characters"),
        (dict(full_name=5), "full_name must be text, not int"),
        (dict(is_superuser="yes"), "User.is_superuser: expected a bool, got str"),
        (dict(is_superuser=1), "User.is_superuser: expected a bool, got int"),
        (dict(is_active="no"), "User.is_active: expected a bool, got str"),
        (dict(is_active=None), "User.is_active: expected a bool, got NoneType"),
        (dict(actor="admin"), "actor must be a saved User, not str"),
        (dict(actor=str(ACTOR)), "actor must be a saved User, not str"),
        (dict(actor=User(email="ghost@example.com")), "actor is an unsaved User: save it first"),
        (dict(user_id="not-a-uuid"), "user_id must be a UUID"),
        (dict(user_id=7), "user_id must be a UUID"),
        (dict(created_at=dt.datetime(2026, 1, 1)), "created_at" + NAIVE),
        (dict(created_at="2026-01-01"), "created_at must be a datetime, not str"),
        (dict(profile=["display_name"]), "profile must be a dict with text keys, not list"),
        (dict(profile={"nickname": "x", "age": 3}),
         "unknown profile fields: age, nickname; valid: display_name, company, timezone, "
         "locale, preferences"),
        (dict(profile={"timezone": ""}), "profile.timezone is empty"),
        (dict(profile={"timezone": "x" * 65}), "profile.timezone is longer than 64 characters"),
        (dict(profile={"locale": "x" * 17}), "profile.locale is longer than 16 characters"),
        (dict(profile={"company": "x" * 201}), "profile.company is longer than 200 characters"),
        (dict(profile={"display_name": "x" * 201}),
         "profile.display_name is longer than 200 characters"),
        (dict(profile={"display_name": None}), "profile.display_name must be text, not NoneType"),
        (dict(profile={"preferences": ["dark"]}),
         "profile.preferences must be a dict with text keys, not list"),
        (dict(profile={"preferences": "dark"}),
         "profile.preferences must be a dict with text keys, not str"),
    ]


@pytest.mark.parametrize("kwargs,message", _create_user_misuse(),
                         ids=lambda v: next(iter(v)) if isinstance(v, dict) else None)
def test_create_user_refuses_misuse_before_any_write(db, kwargs, message):
    admin = svc.create_user("admin@example.com", PASSWORD)
    before = _counts()
    call = {"password": PASSWORD, **kwargs}
    with refused(message):
        svc.create_user("jane@example.com", **call)
    assert _counts() == before
    assert admin.is_active


def test_profile_fields_at_their_limits_are_accepted(db):
    user = svc.create_user("jane@example.com", PASSWORD, full_name="x" * 200,
                           profile={"timezone": "t" * 64, "locale": "l" * 16,
                                    "company": "c" * 200, "display_name": "",
                                    "preferences": {}})
    profile = UserProfile.get(UserProfile.user == user.id)
    assert (len(profile.timezone), len(profile.locale), len(profile.company),
            profile.display_name) == (64, 16, 200, "")
    assert User.get_by_id(user.id).full_name == "x" * 200


def test_a_taken_email_is_a_conflict_with_the_services_message(db):
    svc.create_user("jane@example.com", PASSWORD)
    before = _counts()
    with pytest.raises(ConflictError) as info:
        svc.create_user("JANE@example.com", PASSWORD)
    assert str(info.value) == "a user with that email already exists"
    assert _counts() == before


# -- validate_email and find_user ------------------------------------------------------------------

def test_email_length_limits():
    local = "a" * 64
    domain = ".".join(["b" * 63, "c" * 63, "d" * 57, "com"])  # 254 in all with local@
    email = f"{local}@{domain}"
    assert len(email) == 254
    assert svc.validate_email(email) == email
    with pytest.raises(ValidationError, match="longer than 254"):
        svc.validate_email("a" + email)
    with pytest.raises(ValidationError, match="longer than 254"):
        svc.validate_email("a" * (4 * 254 + 1) + "@example.com")
    with pytest.raises(ValidationError, match="empty"):
        svc.validate_email(None)


@pytest.mark.parametrize("email", [
    "иван@example.com",  # one script per part: Cyrillic local part, Latin domain
    "owner@пример.com", "owner@пример.рф", "owner@ex.пример.com",
    "\U00017000x@example.com",  # a letter unicodedata has no name for (Tangut)
])
def test_each_part_of_an_address_may_use_its_own_script(email):
    assert svc.validate_email(email) == email


@pytest.mark.parametrize("email,message", [
    ("", "email is empty"), ("  ", "email is empty"), (None, "email is empty"),
    ("оwner@example.com", "email mixes Latin, Cyrillic or Greek letters in one part; "
                          "look-alike addresses are refused"),
    ("owner@exаmple.com", "email mixes Latin, Cyrillic or Greek letters in one part; "
                          "look-alike addresses are refused"),
    ("owner@example.com\u200b", "email contains a control or invisible character (U+200B)"),
    ("a" * 1017, "email is longer than 254 characters"),
])
def test_email_refusals_say_what_is_wrong(email, message):
    with refused(message):
        svc.validate_email(email)


def test_find_user_by_uuid_text_or_email_and_misuse(db):
    user = svc.create_user("jane@example.com", PASSWORD)
    assert svc.find_user(user.id).id == user.id
    assert svc.find_user(str(user.id).upper()).id == user.id
    assert svc.find_user(" JANE@example.com ").id == user.id
    for missing in ("ghost@example.com", str(uuid.uuid4()), uuid.uuid4(), "not an email"):
        with pytest.raises(NotFoundError) as info:
            svc.find_user(missing)
        assert str(info.value) == ("no user with that email or id; list users with "
                                   "`within-db inspect rows users`")
    with pytest.raises(ValidationError, match="email_or_id must be text"):
        svc.find_user(5)
    with pytest.raises(ValidationError, match="email_or_id is longer than 1016"):
        svc.find_user("a" * 1017)


# -- authenticate ---------------------------------------------------------------------------------

def test_login_success_records_the_event_and_sets_last_login(db, clock):
    user = svc.create_user("jane@example.com", PASSWORD, created_at=T0)
    other = svc.create_user("other@example.com", PASSWORD, created_at=T0)
    hashed = Credential.get(Credential.user == user.id)
    clock(T0 + dt.timedelta(minutes=5))
    found = svc.authenticate("Jane@example.com", PASSWORD, ip="10.0.0.7")
    assert isinstance(found, User) and found.id == user.id
    assert found.last_login_at == T0 + dt.timedelta(minutes=5)  # the returned row is fresh
    stored = User.get_by_id(user.id)
    assert stored.last_login_at == stored.updated_at == T0 + dt.timedelta(minutes=5)
    untouched = User.get_by_id(other.id)
    assert (untouched.last_login_at, untouched.updated_at) == (None, T0)
    # current parameters: no re-hash
    after = Credential.get(Credential.user == user.id)
    assert (after.password_hash, after.changed_at) == (hashed.password_hash, T0)
    event = _events()[-1]
    assert _event(event) == ("login.success", user.id, "users", str(user.id), {})
    assert event.ip == "10.0.0.7"


@pytest.mark.parametrize("email,password,reason,targeted", [
    ("jane@example.com", PASSWORD + "!", "wrong_password", True),
    ("jane@example.com", "", "wrong_password", True),
    ("nobody@example.com", PASSWORD, "unknown_email", False),
    ("", PASSWORD, "unknown_email", False),
    ("not an email", PASSWORD, "unknown_email", False),
])
def test_login_failures_record_their_reason(db, email, password, reason, targeted):
    user = svc.create_user("jane@example.com", PASSWORD)
    before = User.get_by_id(user.id)
    assert svc.authenticate(email, password, ip="2001:db8::1") is None
    event = _events()[-1]
    assert _event(event) == ("login.failure", None, "users" if targeted else None,
                             str(user.id) if targeted else None, {"reason": reason})
    assert event.ip == "2001:db8::1"
    after = User.get_by_id(user.id)
    assert (after.last_login_at, after.updated_at) == (None, before.updated_at)


def test_an_inactive_user_cannot_log_in_even_with_the_right_password(db):
    user = svc.create_user("jane@example.com", PASSWORD, is_active=False)
    assert svc.authenticate("jane@example.com", PASSWORD) is None
    assert _event(_events()[-1]) == ("login.failure", None, "users", str(user.id),
                                     {"reason": "inactive"})
    assert User.get_by_id(user.id).last_login_at is None


def test_a_corrupt_stored_hash_is_a_failed_login_not_an_error(db):
    user = svc.create_user("jane@example.com", PASSWORD)
    Credential.update(password_hash="$argon2id$garbage").where(
        Credential.user == user.id).execute()
    assert svc.authenticate("jane@example.com", PASSWORD) is None
    assert _events()[-1].metadata == {"reason": "wrong_password"}


def test_an_outdated_hash_is_replaced_at_login(db, clock):
    user = svc.create_user("jane@example.com", PASSWORD, created_at=T0)
    other = svc.create_user("other@example.com", PASSWORD, created_at=T0)
    weak = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash(PASSWORD)
    Credential.update(password_hash=weak).execute()
    clock(T0 + dt.timedelta(days=1))
    assert svc.authenticate("jane@example.com", PASSWORD).id == user.id
    untouched = Credential.get(Credential.user == other.id)  # only the one who logged in
    assert (untouched.password_hash, untouched.changed_at) == (weak, T0)
    credential = Credential.get(Credential.user == user.id)
    assert credential.password_hash != weak
    assert credential.password_hash.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert svc.HASHER.verify(credential.password_hash, PASSWORD)
    assert credential.changed_at == T0 + dt.timedelta(days=1)


def test_login_compares_the_nfkc_form_of_the_password(db):
    svc.create_user("jane@example.com", "ﬁne passphrase here")  # the ligature becomes "fi"
    assert svc.authenticate("jane@example.com", "fine passphrase here") is not None
    assert svc.authenticate("jane@example.com", "ﬁne passphrase here") is not None


@pytest.mark.parametrize("kwargs,message", [
    (dict(email=5), "email must be text, not int"),
    (dict(email="a" * 1017), "email is longer than 1016 characters"),
    (dict(email="jane\x00@example.com"),
     "email contains a control or invisible character (U+0000)"),
    (dict(password=None), "password must be text, not NoneType"),
    (dict(password="x" * 4097), "password is longer than 4096 characters"),
    (dict(password="pass\x00word long"),
     "password contains a control or invisible character (U+0000)"),
    (dict(ip=5), "ip must be text, not int"),
    (dict(ip="1" * 46), "ip is longer than 45 characters"),
    (dict(ip="10.0.0.256"), "ip: not an IPv4 or IPv6 address"),
])
def test_authenticate_refuses_misuse_and_records_nothing(db, kwargs, message):
    svc.create_user("jane@example.com", PASSWORD)
    before = _counts()
    call = {"email": "jane@example.com", "password": PASSWORD, **kwargs}
    with refused(message):
        svc.authenticate(**call)
    assert _counts() == before


def test_longest_accepted_login_arguments_are_failures_not_errors(db):
    longest_ip = "fe80::1%" + "x" * 37
    assert svc.authenticate("a" * 1016, "x" * 4096, ip=longest_ip) is None
    event = _events()[-1]
    assert (event.metadata, event.ip) == ({"reason": "unknown_email"}, longest_ip)


# -- set_password ----------------------------------------------------------------------------------

def test_set_password_replaces_the_hash_revokes_sessions_only_and_records_both(db, clock):
    admin = svc.create_user("admin@example.com", PASSWORD)
    user = svc.create_user("jane@example.com", PASSWORD, created_at=T0)
    session, _ = svc.issue_token(user, "session")
    api_key, _ = svc.issue_token(user, "api_key")
    clock(T0 + dt.timedelta(hours=1))
    svc.set_password(user, "another long passphrase", actor=admin)
    credential = Credential.get(Credential.user == user.id)
    assert credential.changed_at == T0 + dt.timedelta(hours=1)
    assert svc.HASHER.verify(credential.password_hash, "another long passphrase")
    assert svc.verify_token(session) is None
    assert svc.verify_token(api_key).id == user.id
    assert svc.authenticate("admin@example.com", PASSWORD).id == admin.id  # only jane's changed
    revoked, changed = [e for e in _events() if e.action in ("token.revoked",
                                                             "password.changed")]
    assert _event(revoked) == ("token.revoked", admin.id, "users", str(user.id),
                               {"count": 1, "kind": "session"})
    assert _event(changed) == ("password.changed", admin.id, "users", str(user.id), {})


def test_set_password_by_the_user_themselves(db):
    user = svc.create_user("jane@example.com", PASSWORD)
    svc.set_password(user, "another long passphrase")
    assert _event(_events()[-1]) == ("password.changed", user.id, "users", str(user.id), {})
    assert _events("token.revoked") == []  # no session to revoke, no event


def test_set_password_gives_a_credential_to_a_user_without_one(db):
    user = make_user()
    svc.set_password(user, "another long passphrase")
    assert svc.authenticate(user.email, "another long passphrase").id == user.id
    assert Credential.select().where(Credential.user == user.id).count() == 1


@pytest.mark.parametrize("kwargs,message", [
    (dict(new_password="short"), "password must be at least 12 characters"),
    (dict(user="jane"), "user must be a saved User, not str"),
    (dict(actor="admin"), "actor must be a saved User, not str"),
    (dict(actor=str(ACTOR)), "actor must be a saved User, not str"),
])
def test_set_password_refuses_misuse_and_changes_nothing(db, kwargs, message):
    user = svc.create_user("jane@example.com", PASSWORD)
    raw, _ = svc.issue_token(user)
    before = _counts()
    call = {"user": user, "new_password": "another long passphrase", **kwargs}
    with refused(message):
        svc.set_password(**call)
    assert _counts() == before
    assert svc.verify_token(raw).id == user.id
    assert svc.authenticate("jane@example.com", PASSWORD) is not None


# -- tokens ---------------------------------------------------------------------------------------

def test_token_digest_is_sha256_of_utf8_with_surrogates_passed():
    assert svc.token_digest("abc") == \
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert svc.token_digest("a\ud800") == \
        hashlib.sha256("a\ud800".encode("utf-8", "surrogatepass")).hexdigest()
    for bad, kind in ((None, "NoneType"), (b"abc", "bytes"), (5, "int")):
        with refused(f"a token must be text, not {kind}"):
            svc.token_digest(bad)


@pytest.mark.parametrize("kind,prefix,ttl", [
    ("session", "wdbs_", dt.timedelta(hours=12)), ("api_key", "wdbk_", dt.timedelta(days=90)),
])
def test_issue_token_defaults_per_kind_and_records_the_event(db, kind, prefix, ttl):
    user = svc.create_user("jane@example.com", PASSWORD)
    raw, token = svc.issue_token(user, kind, name="job", now=T0)
    assert raw.startswith(prefix) and len(raw) == len(prefix) + 43  # 32 bytes, base64url
    stored = AccessToken.get_by_id(token.id)
    assert (stored.user_id, stored.kind, stored.name, stored.prefix, stored.token_hash) == \
        (user.id, kind, "job", raw[:12], svc.token_digest(raw))
    assert (stored.created_at, stored.expires_at, stored.revoked_at, stored.last_used_at) == \
        (T0, T0 + ttl, None, None)
    event = _events()[-1]
    assert _event(event) == ("token.issued", user.id, "access_tokens", str(token.id),
                             {"kind": kind})
    assert event.created_at == T0


def test_issue_token_default_kind_name_and_now(db):
    user = svc.create_user("jane@example.com", PASSWORD)
    before = dt.datetime.now(UTC)
    raw, token = svc.issue_token(user)
    stored = AccessToken.get_by_id(token.id)
    assert (stored.kind, stored.name) == ("session", "")
    assert before <= stored.created_at <= dt.datetime.now(UTC)
    assert stored.expires_at - stored.created_at == dt.timedelta(hours=12)


def test_issue_token_ttl_limits(db):
    user = svc.create_user("jane@example.com", PASSWORD)
    _, token = svc.issue_token(user, ttl=dt.timedelta(microseconds=1), now=T0)
    assert AccessToken.get_by_id(token.id).expires_at == T0 + dt.timedelta(microseconds=1)
    _, token = svc.issue_token(user, ttl=dt.timedelta(days=3660), now=T0)
    assert AccessToken.get_by_id(token.id).expires_at == T0 + dt.timedelta(days=3660)


@pytest.mark.parametrize("kwargs,message", [
    (dict(user="jane"), "user must be a saved User, not str"),
    (dict(kind="cookie"), "kind must be one of session, api_key"),
    (dict(kind=None), "kind must be one of session, api_key"),
    (dict(ttl=dt.timedelta(0)), "ttl must be positive and at most 3660 days"),
    (dict(ttl=dt.timedelta(days=3660, microseconds=1)),
     "ttl must be positive and at most 3660 days"),
    (dict(ttl=3600), "ttl must be a timedelta, not int"),
    (dict(name="x" * 101), "name is longer than 100 characters"),
    (dict(name=None), "name must be text, not NoneType"),
    (dict(now=dt.datetime(2026, 1, 1)), "now" + NAIVE),
    (dict(now="2026-01-01"), "now must be a datetime, not str"),
])
def test_issue_token_refuses_misuse_before_any_write(db, kwargs, message):
    user = svc.create_user("jane@example.com", PASSWORD)
    before = _counts()
    with refused(message):
        svc.issue_token(**{"user": user, **kwargs})
    assert _counts() == before


def test_a_token_expires_at_its_expiry_instant_exactly(db, clock):
    user = svc.create_user("jane@example.com", PASSWORD)
    raw, token = svc.issue_token(user, ttl=dt.timedelta(hours=1), now=T0)
    expiry = T0 + dt.timedelta(hours=1)
    clock(expiry - dt.timedelta(microseconds=1))
    assert svc.verify_token(raw).id == user.id
    clock(expiry)
    assert svc.verify_token(raw) is None
    clock(expiry + dt.timedelta(microseconds=1))
    assert svc.verify_token(raw) is None
    stored = AccessToken.get_by_id(token.id)
    assert stored.last_used_at == expiry - dt.timedelta(microseconds=1)
    assert len(_events("token.used")) == 1


VERIFY_QUERIES = {"sqlite": 8, "postgres": 9}  # savepoints included


def test_verify_token_marks_use_and_records_the_event(db, clock, backend):
    user = svc.create_user("jane@example.com", PASSWORD)
    other = svc.create_user("other@example.com", PASSWORD)
    raw, token = svc.issue_token(user, "api_key", now=T0)
    _, other_token = svc.issue_token(other, "api_key", now=T0)
    clock(T0 + dt.timedelta(minutes=3))
    with count_queries() as counter:
        owner = svc.verify_token(raw, ip="192.0.2.10")
    # the owner comes with the token: no query beyond the lookup, the update and the append
    assert counter.count == VERIFY_QUERIES[backend]
    assert isinstance(owner, User) and owner.id == user.id and owner.email == "jane@example.com"
    assert AccessToken.get_by_id(token.id).last_used_at == T0 + dt.timedelta(minutes=3)
    assert AccessToken.get_by_id(other_token.id).last_used_at is None
    event = _events()[-1]
    assert _event(event) == ("token.used", user.id, "access_tokens", str(token.id), {})
    assert event.ip == "192.0.2.10"


def test_dead_tokens_match_nothing_and_leave_no_trace(db):
    user = svc.create_user("jane@example.com", PASSWORD)
    revoked, token = svc.issue_token(user)
    svc.revoke_token(token)
    inactive_user = svc.create_user("gone@example.com", PASSWORD)
    inactive, inactive_token = svc.issue_token(inactive_user)
    User.update(is_active=False).where(User.id == inactive_user.id).execute()
    before = _counts()
    for raw in (revoked, inactive, revoked + "x", "wdbs_unknown", "", None, 5, b"wdbs_"):
        assert svc.verify_token(raw) is None
    assert _counts() == before
    assert AccessToken.get_by_id(token.id).last_used_at is None
    assert AccessToken.get_by_id(inactive_token.id).last_used_at is None


def _token_row(user, raw):
    return AccessToken.create(user=user, token_hash=svc.token_digest(raw), kind="api_key",
                              prefix=raw[:12], expires_at=dt.datetime.now(UTC)
                              + dt.timedelta(days=1))


def test_raw_token_length_limit_and_nul(db):
    user = svc.create_user("jane@example.com", PASSWORD)
    longest, too_long, with_nul = "t" * 256, "t" * 257, "wdbk_abcdefgh\x00ijk"
    rows = [_token_row(user, raw) for raw in (longest, too_long, with_nul)]
    assert svc.verify_token(longest).id == user.id
    assert svc.verify_token(too_long) is None
    assert svc.verify_token(with_nul) is None
    assert svc.revoke_token(too_long) is False and svc.revoke_token(with_nul) is False
    assert AccessToken.get_by_id(rows[1].id).revoked_at is None
    assert svc.revoke_token(longest) is True


@pytest.mark.parametrize("ip,message", [(5, "ip must be text, not int"),
                                        ("1" * 46, "ip is longer than 45 characters"),
                                        ("::g", "ip: not an IPv4 or IPv6 address")])
def test_verify_token_refuses_a_bad_ip(db, ip, message):
    user = svc.create_user("jane@example.com", PASSWORD)
    raw, _ = svc.issue_token(user)
    with refused(message):
        svc.verify_token(raw, ip=ip)
    assert _events("token.used") == []


def test_revoke_token_by_row_and_by_secret_records_who_revoked(db, clock):
    admin = svc.create_user("admin@example.com", PASSWORD)
    user = svc.create_user("jane@example.com", PASSWORD)
    first, first_row = svc.issue_token(user)
    second, second_row = svc.issue_token(user)
    clock(T0)
    assert svc.revoke_token(first_row, actor=admin) is True
    assert AccessToken.get_by_id(first_row.id).revoked_at == T0
    assert _event(_events()[-1]) == ("token.revoked", admin.id, "access_tokens",
                                     str(first_row.id), {})
    assert svc.revoke_token(second) is True
    assert _event(_events()[-1]) == ("token.revoked", user.id, "access_tokens",
                                     str(second_row.id), {})
    events = len(_events())
    clock(T0 + dt.timedelta(hours=1))
    assert svc.revoke_token(first_row) is False  # already revoked: unchanged, no event
    assert svc.revoke_token(second) is False
    assert svc.revoke_token("wdbs_unknown") is False
    assert svc.revoke_token("") is False
    assert AccessToken.get_by_id(first_row.id).revoked_at == T0
    assert len(_events()) == events
    assert svc.verify_token(first) is None and svc.verify_token(second) is None


@pytest.mark.parametrize("kwargs,message", [
    (dict(token=5), "token must be a saved AccessToken or a raw token, not int"),
    (dict(token=None), "token must be a saved AccessToken or a raw token, not NoneType"),
    (dict(token=AccessToken(kind="session")), "token is an unsaved AccessToken: save it first"),
    (dict(actor="admin"), "actor must be a saved User, not str"),
    (dict(actor=str(ACTOR)), "actor must be a saved User, not str"),
])
def test_revoke_token_refuses_misuse(db, kwargs, message):
    user = svc.create_user("jane@example.com", PASSWORD)
    raw, row = svc.issue_token(user)
    before = _counts()
    with refused(message):
        svc.revoke_token(**{"token": row, **kwargs})
    assert _counts() == before
    assert svc.verify_token(raw).id == user.id


def test_revoke_all_counts_live_tokens_of_one_user_by_kind(db, clock):
    admin = svc.create_user("admin@example.com", PASSWORD)
    user = svc.create_user("jane@example.com", PASSWORD)
    other = svc.create_user("other@example.com", PASSWORD)
    sessions = [svc.issue_token(user, "session")[0] for _ in range(2)]
    keys = [svc.issue_token(user, "api_key")[0] for _ in range(3)]
    others = svc.issue_token(other, "session")[0]
    _, early = svc.issue_token(user, "api_key")
    clock(T0)
    svc.revoke_token(early)
    clock(T0 + dt.timedelta(hours=1))
    assert svc.revoke_all(user, kind="session", actor=admin) == 2
    assert _event(_events()[-1]) == ("token.revoked", admin.id, "users", str(user.id),
                                     {"count": 2, "kind": "session"})
    assert [svc.verify_token(raw) for raw in sessions] == [None, None]
    assert all(svc.verify_token(raw) for raw in keys)
    assert svc.revoke_all(user) == 3  # the already revoked key is not counted again
    assert _event(_events()[-1]) == ("token.revoked", user.id, "users", str(user.id),
                                     {"count": 3, "kind": "all"})
    assert AccessToken.get_by_id(early.id).revoked_at == T0
    assert svc.verify_token(others).id == other.id
    events = len(_events())
    assert svc.revoke_all(user) == 0
    assert len(_events()) == events  # nothing revoked, nothing recorded


@pytest.mark.parametrize("kwargs,message", [
    (dict(user="jane"), "user must be a saved User, not str"),
    (dict(kind="cookie"), "kind must be one of session, api_key"),
    (dict(actor="admin"), "actor must be a saved User, not str"),
    (dict(actor=str(ACTOR)), "actor must be a saved User, not str"),
])
def test_revoke_all_refuses_misuse(db, kwargs, message):
    user = svc.create_user("jane@example.com", PASSWORD)
    raw, _ = svc.issue_token(user)
    with refused(message):
        svc.revoke_all(**{"user": user, **kwargs})
    assert svc.verify_token(raw).id == user.id


# -- roles and permissions -----------------------------------------------------------------------

@pytest.mark.parametrize("codename", ["a.b", "campaigns.edit", "a.b.c", "ml_models.run_any",
                                      "v2.x9", "x" * 48 + "." + "y" * 51])
def test_valid_codenames(db, codename):
    assert svc.ensure_permission(codename).codename == codename


@pytest.mark.parametrize("codename,message", [
    *((bad, "{name}" + DOTTED) for bad in ("campaigns", "Campaigns.edit", "a..b", ".a.b",
                                           "a.b.", "a.b-c", "a.b c", "a.é", "a._", "a.١")),
    ("", "{name} is empty"), (5, "{name} must be text, not int"),
    ("x" * 50 + "." + "y" * 50, "{name} is longer than 100 characters"),
])
def test_invalid_codenames_are_refused(db, codename, message):
    with refused(message.format(name="codename")):
        svc.ensure_permission(codename)
    with refused(message.format(name="permissions[1]")):
        svc.create_role("role", ["ok.fine", codename])
    assert (Permission.select().count(), Role.select().count()) == (0, 0)


def test_ensure_permission_creates_once_and_keeps_the_first_description(db):
    first = svc.ensure_permission("campaigns.edit", "Edit\ncampaigns")
    again = svc.ensure_permission("campaigns.edit", "something else")
    assert again.id == first.id
    assert Permission.get_by_id(first.id).description == "Edit\ncampaigns"
    assert svc.ensure_permission("campaigns.view").description == ""
    with refused("description must be text, not NoneType"):
        svc.ensure_permission("campaigns.delete", description=None)


def test_create_role_links_each_permission_once(db):
    role = svc.create_role("marketer", ["campaigns.view", "campaigns.edit", "campaigns.view"],
                           description="Runs\ncampaigns", now=T0)
    stored = Role.get_by_id(role.id)
    assert (stored.name, stored.description, stored.created_at, stored.updated_at) == \
        ("marketer", "Runs\ncampaigns", T0, T0)
    linked = sorted(p.codename for p in Permission.select().join(
        RolePermission).where(RolePermission.role == role.id))
    assert linked == ["campaigns.edit", "campaigns.view"]
    empty = svc.create_role("nobody")
    assert Role.get_by_id(empty.id).description == ""
    assert RolePermission.select().where(RolePermission.role == empty.id).count() == 0


@pytest.mark.parametrize("kwargs,message", [
    (dict(name=""), "name is empty"),
    (dict(name="x" * 65), "name is longer than 64 characters"),
    (dict(permissions="campaigns.view"), "permissions must be a list, not str"),
    (dict(description=None), "description must be text, not NoneType"),
    (dict(now=dt.datetime(2026, 1, 1)), "now" + NAIVE),
])
def test_create_role_refuses_misuse_before_any_write(db, kwargs, message):
    with refused(message):
        svc.create_role(**{"name": "marketer", "permissions": ["a.b"], **kwargs})
    assert (Role.select().count(), Permission.select().count()) == (0, 0)


def test_a_taken_role_name_is_a_conflict_and_writes_nothing(db):
    svc.create_role("marketer", ["a.b"])
    before = _counts()
    with pytest.raises(ConflictError) as info:
        svc.create_role("marketer", ["c.d"])
    assert str(info.value) == "a role with that name already exists"
    assert _counts() == before
    assert svc.create_role("x" * 64).name == "x" * 64


def test_creating_roles_and_permissions_is_audited_by_the_actor(db):
    admin = svc.create_user("admin@example.com", PASSWORD)
    svc.ensure_permission("campaigns.view")
    before = len(_events())
    role = svc.create_role("marketer", ["campaigns.edit", "campaigns.view", "campaigns.edit"],
                           now=T0, actor=admin)
    events = _events()[before:]
    edit = Permission.get(Permission.codename == "campaigns.edit")
    # only the new permission is recorded, then the role with its permissions in order given
    assert [_event(e) for e in events] == [
        ("permission.created", admin.id, "permissions", str(edit.id),
         {"codename": "campaigns.edit"}),
        ("role.created", admin.id, "roles", str(role.id),
         {"role": "marketer", "permissions": ["campaigns.edit", "campaigns.view"]}),
    ]
    assert {e.created_at for e in events} == {T0}
    again = svc.ensure_permission("campaigns.edit", actor=admin)
    assert again.id == edit.id and len(_events()) == before + 2
    nobody = svc.ensure_permission("reports.view")
    assert _event(_events()[-1]) == ("permission.created", None, "permissions",
                                     str(nobody.id), {"codename": "reports.view"})
    assert verify_audit_chain().ok


@pytest.mark.parametrize("call", [
    lambda actor: svc.create_role("marketer", ["a.b"], actor=actor),
    lambda actor: svc.ensure_permission("a.b", actor=actor),
])
@pytest.mark.parametrize("actor,message", [
    ("admin", "actor must be a saved User, not str"),
    (str(ACTOR), "actor must be a saved User, not str"),
    (User(email="x@example.com"), "actor is an unsaved User: save it first"),
])
def test_role_and_permission_actors_are_checked_before_any_write(db, call, actor, message):
    with refused(message):
        call(actor)
    assert (Role.select().count(), Permission.select().count(),
            AuditLog.select().count()) == (0, 0, 0)


def test_a_refused_role_leaves_no_audit_event(db):
    svc.create_role("marketer")
    before = _counts()
    with pytest.raises(ConflictError):
        svc.create_role("marketer", ["brand.new"])
    assert _counts() == before  # neither the permission nor its event survive


def test_grant_role_records_who_granted_it_once(db):
    boss = svc.create_user("boss@example.com", PASSWORD)
    user = svc.create_user("jane@example.com", PASSWORD)
    role = svc.create_role("marketer", ["campaigns.edit"])
    link = svc.grant_role(user, "marketer", granted_by=boss, at=T0)
    stored = UserRole.get_by_id(link.id)
    assert (stored.user_id, stored.role_id, stored.granted_by_id, stored.granted_at) == \
        (user.id, role.id, boss.id, T0)
    event = _events()[-1]
    assert _event(event) == ("role.granted", boss.id, "users", str(user.id),
                             {"role": "marketer"})
    assert event.created_at == T0
    events = len(_events())
    again = svc.grant_role(user, role, granted_by=user, at=T0 + dt.timedelta(days=1))
    assert again.id == link.id and again.granted_by_id == boss.id
    assert len(_events()) == events and UserRole.select().count() == 1


def test_grant_role_defaults(db):
    user = svc.create_user("jane@example.com", PASSWORD)
    svc.create_role("marketer")
    before = dt.datetime.now(UTC)
    link = svc.grant_role(user, "marketer")
    assert link.granted_by_id is None and link.granted_at >= before
    assert _event(_events()[-1]) == ("role.granted", None, "users", str(user.id),
                                     {"role": "marketer"})


@pytest.mark.parametrize("kwargs,message,error", [
    (dict(user="jane"), "user must be a saved User, not str", ValidationError),
    (dict(granted_by="boss"), "granted_by must be a saved User, not str", ValidationError),
    (dict(granted_by=str(ACTOR)), "granted_by must be a saved User, not str", ValidationError),
    (dict(at=dt.datetime(2026, 1, 1)), "at" + NAIVE, ValidationError),
    (dict(role="nope"), "no role with that name", NotFoundError),
    (dict(role="x" * 65), "role is longer than 64 characters", ValidationError),
    (dict(role=""), "role is empty", ValidationError),
    (dict(role=5), "role must be text, not int", ValidationError),
    (dict(role=Role(name="unsaved")), "role is an unsaved Role: save it first", ValidationError),
])
def test_grant_role_refuses_misuse(db, kwargs, message, error):
    user = svc.create_user("jane@example.com", PASSWORD)
    svc.create_role("marketer")
    before = _counts()
    with refused(message, error):
        svc.grant_role(**{"user": user, "role": "marketer", **kwargs})
    assert _counts() == before


def test_revoke_role_records_who_revoked_it(db):
    boss = svc.create_user("boss@example.com", PASSWORD)
    user = svc.create_user("jane@example.com", PASSWORD)
    other = svc.create_user("other@example.com", PASSWORD)
    role = svc.create_role("marketer", ["campaigns.edit"])
    svc.create_role("auditor", ["audit.view"])
    svc.grant_role(user, role)
    svc.grant_role(user, "auditor")
    svc.grant_role(other, role)
    assert svc.revoke_role(user, "marketer", actor=boss) is True
    assert _event(_events()[-1]) == ("role.revoked", boss.id, "users", str(user.id),
                                     {"role": "marketer"})
    assert svc.role_names(user) == ["auditor"] and svc.role_names(other) == ["marketer"]
    events = len(_events())
    assert svc.revoke_role(user, role) is False
    assert len(_events()) == events
    assert svc.revoke_role(user, "auditor") is True
    assert _event(_events()[-1]) == ("role.revoked", None, "users", str(user.id),
                                     {"role": "auditor"})
    for kwargs, message in ((dict(user="jane"), "user must be a saved User, not str"),
                            (dict(actor="boss"), "actor must be a saved User, not str"),
                            (dict(actor=str(ACTOR)), "actor must be a saved User, not str"),
                            (dict(role="nope"), "no role with that name")):
        with refused(message, WithinDBError):
            svc.revoke_role(**{"user": other, "role": "marketer", **kwargs})
    assert svc.role_names(other) == ["marketer"]


def test_permissions_come_from_ones_own_roles_only(db):
    user = svc.create_user("jane@example.com", PASSWORD)
    other = svc.create_user("other@example.com", PASSWORD)
    boss = svc.create_user("boss@example.com", PASSWORD, is_superuser=True)
    svc.create_role("viewer", ["campaigns.view"])
    svc.create_role("marketer", ["campaigns.view", "campaigns.edit"])
    svc.create_role("auditor", ["audit.view"])
    svc.ensure_permission("loose.permission")
    svc.grant_role(user, "viewer")  # granted and created out of name order
    svc.grant_role(user, "marketer")
    svc.grant_role(other, "auditor")
    with count_queries() as counter:
        assert svc.has_permission(user, "campaigns.edit") is True
    assert counter.count == 1
    assert svc.has_permission(user, "audit.view") is False  # another user's role
    assert svc.has_permission(other, "audit.view") is True
    assert svc.has_permission(user, "loose.permission") is False
    assert svc.has_permission(boss, "not.even.created") is True
    with count_queries() as counter:
        assert svc.permissions_of(user) == {"campaigns.view", "campaigns.edit"}
    assert counter.count == 1
    assert svc.permissions_of(other) == {"audit.view"}
    everything = {"campaigns.view", "campaigns.edit", "audit.view", "loose.permission"}
    with count_queries() as counter:
        assert svc.permissions_of(boss) == everything
    assert counter.count == 1
    assert svc.role_names(user) == ["marketer", "viewer"]
    assert svc.role_names(boss) == [] and svc.permissions_of(
        svc.create_user("new@example.com", PASSWORD)) == set()


def test_deactivated_users_hold_no_permission(db):
    user = svc.create_user("jane@example.com", PASSWORD)
    boss = svc.create_user("boss@example.com", PASSWORD, is_superuser=True)
    svc.create_role("marketer", ["campaigns.edit"])
    svc.grant_role(user, "marketer")
    for who in (user, boss):
        User.update(is_active=False).where(User.id == who.id).execute()
        assert svc.has_permission(who, "campaigns.edit") is False
        assert svc.permissions_of(who) == set()
    # the database decides, not a stale instance: reactivated as a superuser, jane holds all
    svc.ensure_permission("audit.view")
    User.update(is_active=True, is_superuser=True).where(User.id == user.id).execute()
    assert user.is_superuser is False
    assert svc.permissions_of(user) == {"campaigns.edit", "audit.view"}
    assert svc.has_permission(user, "anything.else") is True


@pytest.mark.parametrize("call,message", [
    (lambda u: svc.has_permission("jane", "a.b"), "user must be a saved User, not str"),
    (lambda u: svc.has_permission(u, 5), "codename must be text, not int"),
    (lambda u: svc.has_permission(u, "x" * 101), "codename is longer than 100 characters"),
    (lambda u: svc.permissions_of("jane"), "user must be a saved User, not str"),
    (lambda u: svc.role_names(None), "user must be a saved User, not NoneType"),
    (lambda u: svc.permissions_of(User(email="x@example.com")),
     "user is an unsaved User: save it first"),
])
def test_rbac_reads_refuse_misuse(db, call, message):
    user = svc.create_user("jane@example.com", PASSWORD)
    with refused(message):
        call(user)


# -- no secret in any text ------------------------------------------------------------------------

def test_no_secret_reaches_audit_rows_logs_or_messages(db, caplog):
    caplog.set_level(logging.DEBUG)
    admin = svc.create_user("admin@example.com", PASSWORD)
    user = svc.create_user("jane@example.com", PASSWORD, actor=admin)
    raw, token = svc.issue_token(user, "api_key")
    svc.verify_token(raw, ip="10.0.0.1")
    svc.authenticate("jane@example.com", PASSWORD)
    svc.authenticate("jane@example.com", "the wrong passphrase")
    svc.set_password(user, "the second passphrase", actor=admin)
    svc.create_role("marketer", ["campaigns.edit"])
    svc.grant_role(user, "marketer", granted_by=admin)
    svc.revoke_role(user, "marketer", actor=admin)
    svc.revoke_token(raw, actor=admin)
    svc.revoke_all(user)
    hashes = [c.password_hash for c in Credential.select()]
    secrets = [PASSWORD, "the wrong passphrase", "the second passphrase", raw,
               svc.token_digest(raw), *hashes]
    texts = [caplog.text]
    for row in AuditLog.select():
        texts.append(json.dumps(row.to_dict(), default=str))
    messages = []
    for call in (lambda: svc.create_user("jane@example.com", PASSWORD),
                 lambda: svc.create_user("new@example.com", "the wrong pass\x00"),
                 lambda: svc.hash_password("the wrong"),
                 lambda: svc.authenticate("jane@example.com", "the wrong passphrase\x00"),
                 lambda: svc.create_user("x@example.com", password_hash=hashes[0][:-1] + "\n")):
        with pytest.raises(WithinDBError) as info:
            call()
        messages.append(str(info.value))
    texts += messages
    for text in texts:
        for secret in secrets:
            assert secret not in text
        assert "the wrong" not in text
    assert "jane@example.com" not in " ".join(messages)
    assert verify_audit_chain().ok
