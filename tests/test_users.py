import datetime as dt
import json
import logging
import subprocess
import sys

import pytest
from argon2 import PasswordHasher
from playhouse.test_utils import count_queries

from within_db.errors import ConflictError, NotFoundError, ValidationError
from within_db.models.users import AccessToken, AuditLog, Credential, User
from within_db.services import users as svc
from within_db.services.audit import record_event, verify_audit_chain

PASSWORD = "a sufficiently long passphrase"
UTC = dt.UTC


def _user(email="jane@example.com", **kw):
    return svc.create_user(email, PASSWORD, full_name="Jane Doe", **kw)


@pytest.mark.parametrize("email,message", [
    ("", "empty"), ("   ", "empty"), ("no-at-sign.example.com", "name@domain"),
    ("@example.com", "name@domain"), ("jane@", "name@domain"),
    ("ja ne@example.com", "SPACE"), ("x" * 250 + "@example.com", "longer than 254"),
])
def test_create_user_refuses_bad_emails(db, email, message):
    with pytest.raises(ValidationError, match=message):
        svc.create_user(email, PASSWORD)
    assert User.select().count() == 0


@pytest.mark.parametrize("password,message", [
    ("", "empty"), (None, "empty"), ("short", "at least 12"), ("x" * 2000, "at most 1024"),
])
def test_create_user_refuses_bad_passwords(db, password, message):
    with pytest.raises(ValidationError, match=message):
        svc.create_user("jane@example.com", password)
    assert User.select().count() == 0


def test_create_user_normalises_and_stores_only_an_argon2id_hash(db):
    user = svc.create_user("  Ｊane@Example.COM ", PASSWORD)
    assert user.email == "jane@example.com"
    cred = Credential.get(Credential.user == user.id)
    assert cred.password_hash.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert PASSWORD not in cred.password_hash
    assert "password_hash" not in cred.to_dict()
    assert cred.password_hash not in repr(cred)


def test_duplicate_email_is_a_conflict_whatever_the_case(db):
    _user()
    with pytest.raises(ConflictError, match="already exists"):
        svc.create_user("JANE@example.com", PASSWORD)
    assert User.select().count() == 1


def test_authenticate_success_failure_unknown_and_inactive(db):
    user = _user()
    assert svc.authenticate("JANE@example.com", PASSWORD).id == user.id
    assert User.get_by_id(user.id).last_login_at is not None
    assert svc.authenticate("jane@example.com", PASSWORD + "!") is None
    assert svc.authenticate("nobody@example.com", PASSWORD) is None
    assert svc.authenticate("", PASSWORD) is None
    User.update(is_active=False).where(User.id == user.id).execute()
    assert svc.authenticate("jane@example.com", PASSWORD) is None
    actions = [(a.action, (a.metadata or {}).get("reason"))
               for a in AuditLog.select().order_by(AuditLog.id)]
    assert actions == [("user.created", None), ("login.success", None),
                       ("login.failure", "wrong_password"), ("login.failure", "unknown_email"),
                       ("login.failure", "unknown_email"), ("login.failure", "inactive")]


def test_unknown_email_costs_a_hash_verification(db, monkeypatch):
    calls = []

    class Counting(PasswordHasher):
        def verify(self, hash, password):
            calls.append(hash)
            return super().verify(hash, password)

    monkeypatch.setattr(svc, "HASHER", Counting(time_cost=2, memory_cost=19 * 1024,
                                                 parallelism=1))
    svc.authenticate("ghost@example.com", PASSWORD)
    _user()
    svc.authenticate("jane@example.com", PASSWORD + "x")
    assert len(calls) == 2
    # the unknown email was verified against a hash of the same parameters
    assert calls[0].split("$")[3] == calls[1].split("$")[3] == "m=19456,t=2,p=1"


def test_outdated_hash_is_rehashed_on_login(db):
    user = _user()
    weak = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash(PASSWORD)
    Credential.update(password_hash=weak).where(Credential.user == user.id).execute()
    assert svc.authenticate("jane@example.com", PASSWORD) is not None
    stored = Credential.get(Credential.user == user.id).password_hash
    assert stored != weak and "m=19456,t=2,p=1" in stored


def test_set_password_changes_login_and_revokes_sessions(db):
    user = _user()
    raw, _ = svc.issue_token(user, "session")
    svc.set_password(user, "another long passphrase")
    assert svc.authenticate("jane@example.com", PASSWORD) is None
    assert svc.authenticate("jane@example.com", "another long passphrase") is not None
    assert svc.verify_token(raw) is None
    assert AuditLog.select().where(AuditLog.action == "password.changed").count() == 1


def test_tokens_are_stored_as_digests_and_verified(db):
    user = _user()
    raw, token = svc.issue_token(user, "api_key", name="scoring job")
    assert raw.startswith("wdbk_") and len(raw) >= 5 + 43  # 256 bits in base64url
    stored = AccessToken.get_by_id(token.id)
    assert stored.token_hash != raw and raw not in json.dumps(stored.to_dict())
    assert stored.token_hash == svc.token_digest(raw) and stored.prefix == raw[:12]
    assert svc.verify_token(raw).id == user.id
    assert AccessToken.get_by_id(token.id).last_used_at is not None
    flipped = raw[:-1] + ("A" if raw[-1] != "A" else "B")
    assert svc.verify_token(flipped) is None
    assert svc.verify_token("") is None and svc.verify_token("wdbk_unknown") is None


def test_expired_revoked_and_inactive_tokens_are_refused(db):
    user = _user()
    past = dt.datetime.now(UTC) - dt.timedelta(days=2)
    expired, _ = svc.issue_token(user, "session", ttl=dt.timedelta(hours=1), now=past)
    assert svc.verify_token(expired) is None
    revoked, _ = svc.issue_token(user, "session")
    assert svc.revoke_token(revoked) is True
    assert svc.revoke_token(revoked) is False
    assert svc.verify_token(revoked) is None
    live, _ = svc.issue_token(user, "api_key")
    other, _ = svc.issue_token(user, "session")
    User.update(is_active=False).where(User.id == user.id).execute()
    assert svc.verify_token(live) is None
    assert svc.revoke_all(user) == 3  # the expired one, live and other
    assert svc.verify_token(other) is None
    with pytest.raises(ValidationError):
        svc.issue_token(user, "cookie")
    with pytest.raises(ValidationError):
        svc.issue_token(user, "session", ttl=dt.timedelta(0))


def test_roles_and_permissions(db):
    user, boss = _user(), _user("boss@example.com", is_superuser=True)
    svc.create_role("marketer", ["campaigns.view", "campaigns.edit"])
    svc.create_role("auditor", ["audit.view"])
    with pytest.raises(ConflictError):
        svc.create_role("marketer")
    assert not svc.has_permission(user, "campaigns.edit")
    svc.grant_role(user, "marketer", granted_by=boss)
    svc.grant_role(user, "marketer")  # idempotent
    with count_queries() as counter:
        assert svc.has_permission(user, "campaigns.edit")
    assert counter.count == 1
    with count_queries() as counter:
        assert svc.has_permission(boss, "anything.at_all")
    assert counter.count == 1
    assert not svc.has_permission(user, "audit.view")
    assert svc.permissions_of(user) == {"campaigns.view", "campaigns.edit"}
    assert svc.permissions_of(boss) == {"campaigns.view", "campaigns.edit", "audit.view"}
    assert svc.role_names(user) == ["marketer"]
    assert svc.revoke_role(user, "marketer") is True
    assert svc.revoke_role(user, "marketer") is False
    assert not svc.has_permission(user, "campaigns.view")
    with pytest.raises(NotFoundError):
        svc.grant_role(user, "nope")
    User.update(is_active=False).where(User.id == boss.id).execute()
    assert not svc.has_permission(boss, "campaigns.view")
    actions = [a.action for a in AuditLog.select().order_by(AuditLog.id)][-2:]
    assert "role.granted" in [a.action for a in AuditLog.select()] and actions[-1] == "role.revoked"


def test_find_user_by_email_or_id(db):
    user = _user()
    assert svc.find_user("JANE@example.com").id == user.id
    assert svc.find_user(str(user.id)).id == user.id
    with pytest.raises(NotFoundError):
        svc.find_user("ghost@example.com")


def test_audit_chain_detects_altered_deleted_and_swapped_rows(db, backend):
    user = _user()
    for i in range(4):
        record_event(user, f"event.{i}", metadata={"i": i})
    report = verify_audit_chain()
    assert report.ok and report.checked == 5
    rows = list(AuditLog.select().order_by(AuditLog.id))
    _drop_triggers(db, backend)
    # altered
    with db.atomic() as sp:
        AuditLog.update(action="event.x").where(AuditLog.id == rows[2].id).execute()
        assert verify_audit_chain().broken_id == rows[2].id
        sp.rollback()
    # deleted
    with db.atomic() as sp:
        AuditLog.delete().where(AuditLog.id == rows[1].id).execute()
        assert verify_audit_chain().broken_id == rows[2].id
        sp.rollback()
    # swapped pair: exchange every column but the id
    with db.atomic() as sp:
        a, b = rows[2], rows[3]
        cols = ["actor", "action", "target_type", "target_id", "metadata", "ip", "created_at",
                "prev_hash", "row_hash"]
        AuditLog.update(row_hash="f" * 64).where(AuditLog.id == a.id).execute()
        AuditLog.update({c: getattr(a, c) for c in cols}).where(AuditLog.id == b.id).execute()
        AuditLog.update({c: getattr(b, c) for c in cols}).where(AuditLog.id == a.id).execute()
        assert verify_audit_chain().broken_id == a.id
        sp.rollback()
    assert verify_audit_chain().ok


def _drop_triggers(db, backend):
    if backend == "postgres":
        db.execute_sql("DROP TRIGGER audit_logs_no_change ON audit_logs")
    else:
        db.execute_sql("DROP TRIGGER audit_logs_no_update")
        db.execute_sql("DROP TRIGGER audit_logs_no_delete")


def test_the_database_refuses_update_and_delete_of_audit_rows(db):
    record_event(None, "system.start")
    with raises_violation_any(db):
        AuditLog.update(action="tampered").execute()
    with raises_violation_any(db):
        AuditLog.delete().execute()
    assert AuditLog.get().action == "system.start"


def raises_violation_any(db):
    import peewee

    class _Ctx:
        def __enter__(self):
            self.sp = db.atomic()
            self.sp.__enter__()

        def __exit__(self, exc_type, exc, tb):
            self.sp.__exit__(exc_type, exc, tb)
            assert exc_type is not None and issubclass(exc_type, peewee.IntegrityError), exc_type
            assert "append-only" in str(exc)
            return True

    return _Ctx()


HOSTILE = ["'; DROP TABLE users; --", "quote ' and \" dq", "unicode ✓ é 🚀 中文",
           "back\\slash\ttab\nnewline", "x" * 10_000]


def test_hostile_strings_are_stored_literally(db):
    for i, text in enumerate(HOSTILE):
        name = text[:200].replace("\t", " ").replace("\n", " ")  # one-line text refuses both
        user = svc.create_user(f"h{i}@example.com", PASSWORD, full_name=name)
        record_event(user, "note", metadata={"text": text}, ip="10.0.0.1")
        assert User.get_by_id(user.id).full_name == name
    with pytest.raises(ValidationError, match="control or invisible character"):
        svc.create_user("h9@example.com", PASSWORD, full_name="two\nlines")
    notes = [a.metadata["text"] for a in AuditLog.select().where(AuditLog.action == "note")
             .order_by(AuditLog.id)]
    assert notes == HOSTILE
    assert User.select().count() == len(HOSTILE)
    assert verify_audit_chain().ok


def test_no_secret_in_logs_or_errors(db, caplog):
    caplog.set_level(logging.DEBUG)
    user = _user()
    raw, token = svc.issue_token(user)
    svc.verify_token(raw)
    svc.authenticate("jane@example.com", PASSWORD)
    cred = Credential.get(Credential.user == user.id)
    for secret in (PASSWORD, raw, token.token_hash, cred.password_hash):
        assert secret not in caplog.text
        assert secret not in repr(token) and secret not in json.dumps(token.to_dict())
    with pytest.raises(ConflictError) as info:
        _user()
    assert "jane@example.com" not in str(info.value)


def test_concurrent_appends_keep_one_valid_chain(migrated_fresh_db, fresh_url):
    code = (
        "import sys, within_db\n"
        "from within_db.services.audit import record_event\n"
        "within_db.connect(sys.argv[1])\n"
        "for i in range(200):\n"
        "    record_event(None, 'worker.event', metadata={'worker': sys.argv[2], 'i': i})\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, fresh_url, str(w)],
                              stderr=subprocess.PIPE, text=True) for w in range(4)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errors
    with migrated_fresh_db.connection_context():
        report = verify_audit_chain()
    assert report.ok and report.checked == 800


def test_appends_inside_callers_read_then_write_transactions_lose_nothing(
        migrated_fresh_db, fresh_url):
    # Four processes each run `with db.atomic(): <a read>; record_event(...)` 300 times.
    # A deferred SQLite transaction that read first could not take the write lock while
    # another process wrote ("database is locked"); top-level transactions begin IMMEDIATE.
    code = (
        "import sys, within_db\n"
        "from within_db.models.users import AuditLog\n"
        "from within_db.services.audit import record_event\n"
        "db = within_db.connect(sys.argv[1])\n"
        "for i in range(300):\n"
        "    with db.atomic():\n"
        "        AuditLog.select().count()\n"
        "        record_event(None, 'worker.event', metadata={'worker': sys.argv[2], 'i': i})\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, fresh_url, str(w)],
                              stderr=subprocess.PIPE, text=True) for w in range(4)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errors
    with migrated_fresh_db.connection_context():
        report = verify_audit_chain()
        assert AuditLog.select().where(AuditLog.action == "worker.event").count() == 1200
    assert report.ok and report.checked == 1200


@pytest.mark.parametrize("email,message", [
    ("\u043ewner@example.com", "mixes Latin, Cyrillic or Greek"),  # Cyrillic о
    ("own\u03b5r@example.com", "mixes Latin, Cyrillic or Greek"),  # Greek ε
    ("owner@ex\u0430mple.com", "mixes Latin, Cyrillic or Greek"),  # Cyrillic а in the domain
    ("owner@example.com\u200b", "invisible character \\(U\\+200B\\)"),
    ("own\u200der@example.com", "invisible character \\(U\\+200D\\)"),
    ("owner\x00@example.com", "U\\+0000"),
    ("owner\n@example.com", "U\\+000A"),
    ("owner@localhost", "period"),
])
def test_look_alike_and_invisible_emails_are_refused(db, email, message):
    _user("owner@example.com")
    with pytest.raises(ValidationError, match=message):
        svc.create_user(email, PASSWORD)
    assert User.select().count() == 1


def test_emails_are_normalised_and_one_script_per_part_is_fine(db):
    assert svc.validate_email("  Ｏwner@EXAMPLE.com ") == "owner@example.com"
    assert svc.validate_email("иван@пример.рф") == "иван@пример.рф"
    user = _user("Owner@Example.com")
    assert svc.find_user("owner@example.com").id == user.id
    with pytest.raises(ConflictError):
        svc.create_user("OWNER@example.com", PASSWORD)
    with pytest.raises(NotFoundError):  # a look-alike finds nobody rather than failing
        svc.find_user("\u043ewner@example.com")
