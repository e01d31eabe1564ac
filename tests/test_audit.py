"""The audit log proves itself: canonical hashes, no statement that rewrites a row, signed
checkpoints against truncation and re-hashing, verification in flat memory."""

import datetime as dt
import ipaddress
import json
import math
import tracemalloc
import uuid
from decimal import Decimal

import peewee
import pytest
import rfc8785
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from within_db.canonical import canonical_json, canonical_with_document, normalise_json
from within_db.errors import ConfigurationError, ValidationError
from within_db.models.users import AuditLog, User
from within_db.services import users as svc
from within_db.services.audit import (
    GENESIS,
    checkpoint,
    record_event,
    row_digest,
    verify_audit_chain,
)

UTC = dt.UTC
KEY = "k" * 16 + "0123456789abcdef"  # 32 characters
ACTOR = "0f1c2e3a-1111-4222-8333-444455556666"


@pytest.fixture
def audit_key(monkeypatch):
    monkeypatch.setenv("WITHIN_DB_AUDIT_KEY", KEY)
    return KEY


def typed(value):
    """JSON text that tells 1 from 1.0, to compare what was stored with what was expected."""
    return json.dumps(value, sort_keys=True)


# -- canonical JSON ----------------------------------------------------------------------------

def test_row_hash_known_answer():
    metadata = {"b": [1, 2.5, None, True], "a": "é", "big": 2**70, "float": 1e16,
                "tiny": 1.5e-7}
    created = dt.datetime(2026, 1, 31, 12, 0, tzinfo=UTC)
    digest = row_digest(GENESIS, ACTOR, "user.login", "users", "42", metadata, "10.0.0.1",
                        created)
    assert digest == "eb2eaf3fad9711549548d53f6aac3f4e5dc42dc6fc5eb90ed46eceb6ec2be908"
    assert canonical_json(metadata) == ('{"a":"é","b":[1,2.5,null,true],'
                                        '"big":1.180591620717411303424e+21,'
                                        '"float":10000000000000000,"tiny":1.5e-7}')


@pytest.mark.parametrize("value, text", [
    (1e16, "10000000000000000"), (1e20, "100000000000000000000"), (-0.0, "0"), (1.0, "1"),
    (1e21, "1e+21"), (1e300, "1e+300"), (2**70, "1.180591620717411303424e+21"),
    (2**53 + 1, "9007199254740993"), (0.1, "0.1"), (1e-7, "1e-7"),
    ({"\ue000": 1, "\U0001f600": 2}, '{"\U0001f600":2,"\ue000":1}'),  # UTF-16 order
])
def test_canonical_json_renders_numbers_by_value(value, text):
    assert canonical_json(value) == text
    assert canonical_json(normalise_json(value)) == text


I_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids,
                                                              max_size=4),
    max_leaves=12)


@given(I_JSON.filter(lambda v: "\ud800" not in str(v)))
def test_canonical_json_is_rfc8785_where_rfc8785_is_defined(value):
    try:
        expected = rfc8785.dumps(value).decode()
    except UnicodeEncodeError:
        return  # lone surrogates: refused by normalise_json anyway
    assert canonical_json(value) == expected


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_a_float_and_what_jsonb_returns_for_it_hash_alike(x):
    # jsonb keeps the number json.dumps wrote as a decimal: 1e16 comes back as 10000000000000000
    jsonb_text = format(Decimal(json.dumps(x)), "f")
    back = json.loads(jsonb_text)
    assert canonical_json(back) == canonical_json(x) == canonical_json(normalise_json(x))


JSON_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                    max_size=12)
JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**40), 10**40)
    | st.floats(allow_nan=False, allow_infinity=False) | JSON_TEXT,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(JSON_TEXT, kids, max_size=4),
    max_leaves=15)
METADATA = st.dictionaries(JSON_TEXT, JSON_VALUE, max_size=5)


@given(METADATA)
def test_the_fast_path_over_stored_text_equals_canonical_json(metadata):
    items = [GENESIS, None, "a.b", None, "1", "::1", "2026-01-31 12:00:00.000000+00:00"]
    for document in (json.dumps(metadata), json.dumps(metadata, ensure_ascii=False)):
        assert canonical_with_document(items, document) == canonical_json([*items, metadata])


# -- legitimate events verify on both backends ---------------------------------------------------

@pytest.mark.parametrize("metadata", [{"v": 1e16}, {"v": 1e20}, {"v": -0.0}, {"v": 1e300},
                                      {"v": 2**70}, {"v": -(2**64)}, {"v": [1.0, 5e-324]},
                                      {"v": 1.7976931348623157e308}, {"t": (1, "x")}])
def test_numbers_jsonb_rewrites_still_verify(db, metadata):
    row = record_event(None, "x.y", metadata=metadata)
    stored = AuditLog.get_by_id(row.id).metadata
    assert typed(stored) == typed(normalise_json(metadata)) == typed(row.metadata)
    assert verify_audit_chain().ok


def test_inputs_are_stored_in_canonical_form(db):
    user = svc.create_user("canon@example.com", "correct horse battery staple")
    row = record_event(str(user.id).upper(), "x.y", ip=" ::FFFF:10.0.0.1 ",
                       target=("users", user.id))
    stored = AuditLog.get_by_id(row.id)
    assert stored.actor_id == user.id
    assert stored.ip == str(ipaddress.ip_address("::ffff:10.0.0.1"))
    assert stored.target_id == str(user.id)
    record_event(uuid.UUID(str(user.id)), "x.z", ip="10.0.0.1", target=user)
    assert verify_audit_chain().ok


def _misuse_cases():
    deep: dict = {}
    node = deep
    for _ in range(70):
        node["d"] = {}
        node = node["d"]
    return [
        dict(ip=12345), dict(ip="10.0.0.300"), dict(ip="x" * 50), dict(action=5),
        dict(action=""), dict(action="a" * 65), dict(action="nul\x00"), dict(actor=5),
        dict(actor="not-a-uuid"), dict(actor=ACTOR.replace("-", "")),
        dict(target="users"), dict(target=("users", None)), dict(target=("t" * 65, "1")),
        dict(metadata=[1]), dict(metadata={"v": math.nan}), dict(metadata={"v": math.inf}),
        dict(metadata={1: "x"}), dict(metadata={"v": "nul\x00"}),
        dict(metadata={"v": "\ud800"}), dict(metadata={"v": {1, 2}}),
        dict(metadata={"v": b"bytes"}), dict(metadata={"v": 10**1001}),
        dict(metadata=deep), dict(created_at=dt.datetime(2026, 1, 1)),
        dict(created_at="2026-01-01"),
    ]


@pytest.mark.parametrize("kwargs", _misuse_cases(), ids=lambda kw: next(iter(kw)))
def test_hostile_inputs_are_refused_before_any_write(db, kwargs):
    call = {"actor": None, "action": "x.y", **kwargs}
    before = AuditLog.select().count()
    with pytest.raises(ValidationError) as info:
        record_event(call.pop("actor"), call.pop("action"), **call)
    assert "nul\x00" not in str(info.value)
    assert AuditLog.select().count() == before


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(metadata=METADATA)
def test_random_metadata_round_trips_and_verifies(db, metadata):
    with db.atomic() as savepoint:
        row = record_event(None, "prop.event", metadata=metadata)
        stored = AuditLog.get_by_id(row.id).metadata
        assert typed(stored) == typed(normalise_json(metadata))
        report = verify_audit_chain()
        assert report.ok, report
        savepoint.rollback()


# -- no statement changes or removes a row -------------------------------------------------------

COLUMNS = "id, actor_id, action, target_type, target_id, metadata, ip, created_at, " \
          "prev_hash, row_hash"
FORGED = "id, actor_id, 'forged', target_type, target_id, metadata, ip, created_at, " \
         "prev_hash, row_hash"
REWRITES = {
    "sqlite": [
        "UPDATE audit_logs SET action = 'forged' WHERE id = {id}",
        "DELETE FROM audit_logs WHERE id = {id}",
        "DELETE FROM audit_logs",
        f"INSERT OR REPLACE INTO audit_logs ({COLUMNS}) SELECT {FORGED} FROM audit_logs "
        "WHERE id = {id}",
        f"REPLACE INTO audit_logs ({COLUMNS}) SELECT {FORGED} FROM audit_logs WHERE id = {{id}}",
        # a new id but an existing hash: REPLACE would silently delete the old row
        f"INSERT OR REPLACE INTO audit_logs ({COLUMNS}) SELECT id + 1000, actor_id, 'forged', "
        "target_type, target_id, metadata, ip, created_at, prev_hash, row_hash "
        "FROM audit_logs WHERE id = {id}",
        f"INSERT INTO audit_logs ({COLUMNS}) SELECT {FORGED} FROM audit_logs WHERE id = {{id}} "
        "ON CONFLICT (id) DO UPDATE SET action = 'forged'",
        f"INSERT INTO audit_logs ({COLUMNS}) SELECT id + 1000, actor_id, action, target_type, "
        "target_id, metadata, ip, created_at, prev_hash, row_hash FROM audit_logs "
        "WHERE id = {id} ON CONFLICT (row_hash) DO UPDATE SET action = 'forged'",
        "UPDATE OR REPLACE audit_logs SET id = {id} + 1 WHERE id = {id}",
        f"INSERT INTO audit_logs ({COLUMNS}) SELECT -1, actor_id, action, target_type, "
        "target_id, metadata, ip, created_at, prev_hash, 'e' || substr(row_hash, 2) "
        "FROM audit_logs WHERE id = {id}",
    ],
    "postgres": [
        "UPDATE audit_logs SET action = 'forged' WHERE id = {id}",
        "DELETE FROM audit_logs WHERE id = {id}",
        "DELETE FROM audit_logs",
        "TRUNCATE audit_logs",
        f"INSERT INTO audit_logs ({COLUMNS}) SELECT {FORGED} FROM audit_logs WHERE id = {{id}} "
        "ON CONFLICT (id) DO UPDATE SET action = 'forged'",
        f"INSERT INTO audit_logs ({COLUMNS}) SELECT id + 1000, actor_id, action, target_type, "
        "target_id, metadata, ip, created_at, prev_hash, row_hash FROM audit_logs "
        "WHERE id = {id} ON CONFLICT (row_hash) DO UPDATE SET action = 'forged'",
        "MERGE INTO audit_logs a USING (SELECT {id} AS id) s ON a.id = s.id "
        "WHEN MATCHED THEN UPDATE SET action = 'forged'",
        "MERGE INTO audit_logs a USING (SELECT {id} AS id) s ON a.id = s.id "
        "WHEN MATCHED THEN DELETE",
    ],
}


def test_no_statement_rewrites_or_removes_an_audit_row(db, backend):
    for i in range(4):
        record_event(None, f"event.{i}", metadata={"i": i})
    rows = list(AuditLog.select().order_by(AuditLog.id).tuples())
    target = rows[2][0]
    for sql in REWRITES[backend]:
        with pytest.raises(peewee.DatabaseError) as info:
            with db.atomic():
                db.execute_sql(sql.format(id=target))
        message = str(info.value)  # a trigger, or SQLite's conflict message for REPLACE
        assert "append-only" in message or "UNIQUE constraint failed" in message, sql
        assert list(AuditLog.select().order_by(AuditLog.id).tuples()) == rows, sql
    assert verify_audit_chain().ok


def test_appends_still_work_with_the_triggers(db):
    for i in range(3):
        record_event(None, "after.triggers", metadata={"i": i})
    assert [r.id for r in AuditLog.select().order_by(AuditLog.id)] == sorted(
        r.id for r in AuditLog.select())
    assert verify_audit_chain().checked == 3


# -- signed checkpoints ---------------------------------------------------------------------------

def _drop_triggers(db):
    """Play an attacker who owns the database: remove every audit trigger (in a savepoint)."""
    for name, table in db.execute_sql(
            "SELECT tgname, 'audit_logs' FROM pg_trigger WHERE tgrelid = 'audit_logs'::regclass "
            "AND NOT tgisinternal" if db.kind == "postgres" else
            "SELECT name, tbl_name FROM sqlite_master WHERE type = 'trigger' "
            "AND tbl_name = 'audit_logs'").fetchall():
        db.execute_sql(f'DROP TRIGGER "{name}"' + (f' ON "{table}"' if db.kind == "postgres"
                                                   else ""))


def _rehash_from(first_id):
    """Recompute prev_hash and row_hash of every row from ``first_id`` on, as an attacker can."""
    prev = (AuditLog.select(AuditLog.row_hash).where(AuditLog.id < first_id)
            .order_by(AuditLog.id.desc()).limit(1).scalar()) or GENESIS
    for row in AuditLog.select().where(AuditLog.id >= first_id).order_by(AuditLog.id):
        digest = row_digest(prev, str(row.actor_id) if row.actor_id else None, row.action,
                            row.target_type, row.target_id, row.metadata, row.ip,
                            row.created_at)
        AuditLog.update(prev_hash=prev, row_hash=digest).where(AuditLog.id == row.id).execute()
        prev = digest


def _events(n):
    return [record_event(None, f"event.{i}", metadata={"i": i}) for i in range(n)]


def test_a_checkpoint_is_one_signed_json_line(db, audit_key):
    rows = _events(3)
    line = checkpoint()
    assert "\n" not in line and audit_key not in line
    cp = json.loads(line)
    assert cp["last_id"] == rows[-1].id and cp["row_hash"] == rows[-1].row_hash
    assert cp["rows"] == 3 and len(cp["signature"]) == 64
    assert dt.datetime.fromisoformat(cp["at"]).tzinfo is not None
    report = verify_audit_chain(checkpoints=[line, cp])
    assert report.ok and report.checked == 3 and report.checkpoints == 2


def test_an_empty_log_has_a_checkpoint_too(db, audit_key):
    cp = json.loads(checkpoint())
    assert cp["last_id"] is None and cp["rows"] == 0 and cp["row_hash"] == GENESIS
    assert verify_audit_chain(checkpoints=[cp]).ok


def test_truncating_the_tail_is_caught_by_a_checkpoint(db, audit_key):
    rows = _events(5)
    old = checkpoint()
    record_event(None, "after.checkpoint")
    with db.atomic() as savepoint:
        _drop_triggers(db)
        AuditLog.delete().where(AuditLog.id >= rows[3].id).execute()
        assert verify_audit_chain().ok  # nothing anchors the head without a checkpoint
        report = verify_audit_chain(checkpoints=[old])
        assert not report.ok and report.broken_id == rows[-1].id
        assert "missing" in report.reason
        savepoint.rollback()
    with db.atomic() as savepoint:
        _drop_triggers(db)
        AuditLog.delete().execute()
        report = verify_audit_chain(checkpoints=[old])
        assert report.broken_id == rows[-1].id and report.checked == 0
        savepoint.rollback()
    assert verify_audit_chain(checkpoints=[old]).ok


def test_delete_and_rehash_is_caught_by_a_checkpoint(db, audit_key):
    rows = _events(5)
    cp = checkpoint()
    with db.atomic() as savepoint:
        _drop_triggers(db)
        AuditLog.delete().where(AuditLog.id == rows[1].id).execute()
        _rehash_from(rows[2].id)
        assert verify_audit_chain().ok  # a consistent chain again
        report = verify_audit_chain(checkpoints=[cp])
        assert report.broken_id == rows[-1].id and "differs from the checkpoint" in report.reason
        savepoint.rollback()
    with db.atomic() as savepoint:  # a rewritten row, re-hashed up to the head
        _drop_triggers(db)
        AuditLog.update(metadata={"i": 99}).where(AuditLog.id == rows[0].id).execute()
        _rehash_from(rows[0].id)
        assert verify_audit_chain().ok
        assert verify_audit_chain(checkpoints=[cp]).broken_id == rows[-1].id
        savepoint.rollback()


def test_the_first_bad_row_is_named_before_later_checkpoints(db, audit_key):
    rows = _events(4)
    cp = checkpoint()
    with db.atomic() as savepoint:
        _drop_triggers(db)
        AuditLog.update(action="forged").where(AuditLog.id == rows[1].id).execute()
        report = verify_audit_chain(checkpoints=[cp])
        assert report.broken_id == rows[1].id and report.reason.startswith("row content")
        savepoint.rollback()


def test_a_checkpoint_naming_the_wrong_row_count_fails(db, audit_key):
    import hashlib
    import hmac

    _events(2)
    cp = json.loads(checkpoint())
    cp["rows"] = 3  # signed with the key, so only someone holding it could do this
    message = canonical_json({k: cp[k] for k in ("v", "last_id", "row_hash", "rows", "at")})
    cp["signature"] = hmac.new(KEY.encode(), message.encode(), hashlib.sha256).hexdigest()
    assert verify_audit_chain(checkpoints=[cp]).broken_id == cp["last_id"]


def test_forged_or_malformed_checkpoints_are_refused(db, audit_key, monkeypatch):
    _events(2)
    good = json.loads(checkpoint())
    for forged in ({**good, "rows": 1}, {**good, "row_hash": "0" * 64},
                   {**good, "signature": "0" * 64}):
        with pytest.raises(ValidationError, match="invalid signature"):
            verify_audit_chain(checkpoints=[forged])
    for bad in ("not json", "[]", json.dumps({**good, "extra": 1}),
                json.dumps({**good, "last_id": "1"}), {k: good[k] for k in good if k != "at"}):
        with pytest.raises(ValidationError, match="checkpoint 2"):
            verify_audit_chain(checkpoints=[good, bad])
    monkeypatch.setenv("WITHIN_DB_AUDIT_KEY", KEY[::-1])
    with pytest.raises(ValidationError, match="invalid signature") as info:
        verify_audit_chain(checkpoints=[good])
    assert KEY not in str(info.value) and KEY[::-1] not in str(info.value)


@pytest.mark.parametrize("value", [None, "", "short-key"])
def test_checkpoints_need_a_long_enough_key(db, monkeypatch, value):
    if value is None:
        monkeypatch.delenv("WITHIN_DB_AUDIT_KEY", raising=False)
    else:
        monkeypatch.setenv("WITHIN_DB_AUDIT_KEY", value)
    with pytest.raises(ConfigurationError, match="WITHIN_DB_AUDIT_KEY") as info:
        checkpoint()
    assert value is None or not value or value not in str(info.value)
    with pytest.raises(ConfigurationError):
        verify_audit_chain(checkpoints=[])
    assert verify_audit_chain().ok  # a plain check needs no key


# -- flat memory --------------------------------------------------------------------------------

def _chain_rows(n):
    prev = GENESIS
    base = dt.datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(n):
        created = base + dt.timedelta(seconds=i)
        metadata = {"i": i, "role": "analyst"}
        digest = row_digest(prev, None, "bulk.event", "ads", str(i), metadata, "10.0.0.1",
                            created)
        yield {"action": "bulk.event", "target_type": "ads", "target_id": str(i),
               "metadata": metadata, "ip": "10.0.0.1", "created_at": created,
               "prev_hash": prev, "row_hash": digest}
        prev = digest


@pytest.mark.slow
def test_verification_streams_in_flat_memory(migrated_fresh_db):
    from within_db.batch import bulk_insert

    n = 60_000  # the previous verifier held +23 MB here on PostgreSQL, +38 MB at 100,000
    bulk_insert(AuditLog, _chain_rows(n))
    tracemalloc.start()
    try:
        report = verify_audit_chain()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert report.ok and report.checked == n
    assert peak < 10 * 2**20, peak


# -- chains written before canonical hashing -----------------------------------------------------

def _hardening():
    import importlib

    from within_db import migrate
    path = next(migrate.migrations_dir().glob("*_audit_log_hardening.py"))
    return path.stem, importlib.import_module(f"within_db.migrations.{path.stem}")


def _legacy_chain(n, actor, tamper_at=None):
    """Rows as record_event wrote them before canonical hashing (migration 0002's era)."""
    name, module = _hardening()
    prev = GENESIS
    base = dt.datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(n):
        created = base + dt.timedelta(minutes=i)
        metadata = {"i": i, "score": 0.5, "tags": ["a", "é"]}
        digest = module.legacy_digest(prev, actor, f"legacy.{i}", "users", "7", metadata,
                                      "10.0.0.1", created.strftime("%Y-%m-%d %H:%M:%S.%f+00:00"))
        AuditLog.insert(actor=actor, action=f"legacy.{i}" if i != tamper_at else "forged",
                        target_type="users", target_id="7", metadata=metadata, ip="10.0.0.1",
                        created_at=created, prev_hash=prev, row_hash=digest).execute()
        prev = digest


def _migrated_to_0002(db):
    from within_db import migrate
    migrate.upgrade(db, target="0002_audit_log_append_only")
    return str(User.create(email="legacy@example.com").id)  # no event: the chain is legacy


def test_the_hardening_migration_rehashes_an_intact_legacy_chain(fresh_db):
    from within_db import migrate
    actor = _migrated_to_0002(fresh_db)
    _legacy_chain(4, actor)
    assert not verify_audit_chain().ok  # the old format does not verify under the new one
    migrate.upgrade(fresh_db)
    report = verify_audit_chain()
    assert report.ok and report.checked == AuditLog.select().count() == 4
    name, module = _hardening()
    migrate.downgrade(fresh_db, target="0002_audit_log_append_only")
    rows = list(module.stored_rows(fresh_db))
    prev = GENESIS
    for _, values, stored_prev, stored_hash in rows:
        assert stored_prev == prev and stored_hash == module.legacy_digest(prev, *values)
        prev = stored_hash


def test_the_hardening_migration_refuses_a_broken_legacy_chain(fresh_db):
    from within_db import migrate
    from within_db.errors import MigrationError
    actor = _migrated_to_0002(fresh_db)
    _legacy_chain(4, actor, tamper_at=2)
    with pytest.raises(MigrationError, match="already broken at row") as info:
        migrate.upgrade(fresh_db)
    assert "forged" not in str(info.value)
    name, _ = _hardening()
    assert [m.applied for m in migrate.status(fresh_db) if m.name == name] == [False]
