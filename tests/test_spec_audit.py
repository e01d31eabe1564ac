"""services.audit specified: known-answer hashes of concrete events, every kind of tamper
named, checkpoints and their HMAC to the byte, and appends that stay one chain only because
they are serialised (the race tests fail without the lock)."""

import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import threading
import time
import uuid

import pytest

from within_db.errors import ConfigurationError, ValidationError
from within_db.models.users import AuditLog, User
from within_db.services import audit
from within_db.services.audit import (
    GENESIS,
    audit_key,
    checkpoint,
    record_event,
    row_digest,
    verify_audit_chain,
)

UTC = dt.UTC
KEY = "k" * 16 + "0123456789abcdef"  # 32 characters
ACTOR = uuid.UUID("0f1c2e3a-1111-4222-8333-444455556666")
T0 = dt.datetime(2026, 1, 31, 12, 0, tzinfo=UTC)


def sha256(text):
    return hashlib.sha256(text.encode()).hexdigest()


def _actor():
    return User.create(id=ACTOR, email="actor@example.com")


def _rows():
    return list(AuditLog.select().order_by(AuditLog.id))


def _drop_triggers(db):
    """Play an attacker who owns the database: remove every audit trigger (in a savepoint)."""
    for name, table in db.execute_sql(
            "SELECT tgname, 'audit_logs' FROM pg_trigger WHERE tgrelid = 'audit_logs'::regclass "
            "AND NOT tgisinternal" if db.kind == "postgres" else
            "SELECT name, tbl_name FROM sqlite_master WHERE type = 'trigger' "
            "AND tbl_name = 'audit_logs'").fetchall():
        db.execute_sql(f'DROP TRIGGER "{name}"' + (f' ON "{table}"' if db.kind == "postgres"
                                                   else ""))


# -- known answers --------------------------------------------------------------------------------

def test_the_first_event_hashes_the_documented_payload(db):
    actor = _actor()
    row = record_event(actor, "user.login", target=("users", 42), metadata={"b": 1, "a": "é"},
                       ip="10.0.0.1", created_at=T0)
    payload = ('["' + "0" * 64 + '","0f1c2e3a-1111-4222-8333-444455556666","user.login",'
               '"users","42","10.0.0.1","2026-01-31 12:00:00.000000+00:00",{"a":"é","b":1}]')
    assert (row.prev_hash, row.row_hash) == (GENESIS, sha256(payload))
    stored = AuditLog.get_by_id(row.id)
    assert (stored.prev_hash, stored.row_hash) == (GENESIS, sha256(payload))
    assert (stored.actor_id, stored.action, stored.target_type, stored.target_id,
            stored.metadata, stored.ip, stored.created_at) == \
        (ACTOR, "user.login", "users", "42", {"a": "é", "b": 1}, "10.0.0.1", T0)
    # the next row chains to it; nulls are JSON null, an empty object is {}
    later = record_event(None, "system.tick", created_at=T0 + dt.timedelta(microseconds=1))
    payload = (f'["{row.row_hash}",null,"system.tick",null,null,null,'
               '"2026-01-31 12:00:00.000001+00:00",{}]')
    assert (later.prev_hash, later.row_hash) == (row.row_hash, sha256(payload))
    assert verify_audit_chain().ok


# Every rule of the canonical form shows in this text: keys sorted by UTF-16 code units
# (U+1F600 before U+E000), compact separators, non-ASCII written as itself, control
# characters escaped, "/" not escaped, integral floats and -0.0 as integers, exponents past
# 1e21 and below 1e-6, big integers exact, nesting and booleans.
RICH = {"z": [True, False, None], "\ue000": 1, "\U0001f600": 2, "a/b": "line\nfeed\x1f\"q\\",
        "n": {"float": 1e16, "neg": -0.0, "half": 0.5, "tiny": 1.5e-7, "huge": 1e21,
              "big": 2**70, "int": -12},
        "é": "ü"}
RICH_TEXT = ('{"a/b":"line\\nfeed\\u001f\\"q\\\\","n":{"big":1.180591620717411303424e+21,'
             '"float":10000000000000000,"half":0.5,"huge":1e+21,"int":-12,"neg":0,'
             '"tiny":1.5e-7},"z":[true,false,null],"é":"ü","\U0001f600":2,"\ue000":1}')


def test_rich_metadata_hashes_its_canonical_text(db):
    row = record_event(None, "x.rich", metadata=RICH, created_at=T0)
    payload = ('["' + "0" * 64 + '",null,"x.rich",null,null,null,'
               '"2026-01-31 12:00:00.000000+00:00",' + RICH_TEXT + "]")
    assert row.row_hash == sha256(payload)
    assert row.row_hash == "a6ff714e6727171c5b39ee55ef09730635328ec6e1b8e1aa8af5d27b93aaaed6"
    assert verify_audit_chain().ok  # and what either database hands back hashes alike


def test_row_digest_is_the_same_function_with_the_same_limits():
    text = "2026-01-31 12:00:00.000000+00:00"
    expected = sha256('["' + "0" * 64 + f'","{ACTOR}","a.b","t","1","::1","{text}",{{"k":[1]}}]')
    paris = dt.timezone(dt.timedelta(hours=1))
    for created in (T0, text, T0.astimezone(paris)):
        assert row_digest(GENESIS, str(ACTOR), "a.b", "t", "1", {"k": [1.0]}, "::1",
                          created) == expected
    assert row_digest(GENESIS, None, "a.b", None, None, {}, None, T0) == sha256(
        '["' + "0" * 64 + f'",null,"a.b",null,null,null,"{text}",{{}}]')
    longest = "x" * 64
    row_digest(longest, longest, longest, longest, longest, {}, longest, "y" * 40)
    naive = ": naive datetime refused: pass a timezone-aware datetime, e.g. datetime.now(" \
            "timezone.utc)"
    for kwargs, message in (
            (dict(prev_hash="x" * 65), "prev_hash is longer than 64 characters"),
            (dict(actor_id="x" * 65), "actor_id is longer than 64 characters"),
            (dict(action="x" * 65), "action is longer than 64 characters"),
            (dict(target_type="x" * 65), "target_type is longer than 64 characters"),
            (dict(target_id="x" * 65), "target_id is longer than 64 characters"),
            (dict(ip="x" * 65), "ip is longer than 64 characters"),
            (dict(created_at="y" * 41), "created_at is longer than 40 characters"),
            (dict(created_at=dt.datetime(2026, 1, 1)), "created_at" + naive),
            (dict(created_at=5), "created_at must be a datetime, not int"),
            (dict(metadata=[1]), "metadata must be a dict with text keys, not list"),
            (dict(action=""), "action is empty"),
            (dict(actor_id=5), "actor_id must be text, not int")):
        call = dict(prev_hash=GENESIS, actor_id=None, action="a.b", target_type=None,
                    target_id=None, metadata={}, ip=None, created_at=T0)
        call.update(kwargs)
        with pytest.raises(ValidationError) as info:
            row_digest(**call)
        assert str(info.value) == message


@pytest.mark.parametrize("kwargs,message", [
    (dict(action="a" * 65), "action is longer than 64 characters"),
    (dict(action=""), "action is empty"), (dict(action=5), "action must be text, not int"),
    (dict(action="\ud800"), "action: contains NUL or an unpaired surrogate, which PostgreSQL "
                             "cannot store"),
    (dict(created_at=dt.datetime(2026, 1, 1)), "created_at: naive datetime refused: pass a "
     "timezone-aware datetime, e.g. datetime.now(timezone.utc)"),
    (dict(created_at="2026-01-01"), "created_at must be a datetime, not str"),
])
def test_action_and_instant_refusals(db, kwargs, message):
    with pytest.raises(ValidationError) as info:
        record_event(None, **{"action": "x.y", **kwargs})
    assert str(info.value) == message
    assert AuditLog.select().count() == 0


# -- what record_event stores ---------------------------------------------------------------------

def test_actor_forms(db):
    actor = _actor()
    forms = [actor, ACTOR, str(ACTOR), str(ACTOR).upper()]
    rows = [record_event(form, "x.actor") for form in forms]
    assert {AuditLog.get_by_id(r.id).actor_id for r in rows} == {ACTOR}
    assert record_event(None, "x.none").actor_id is None
    assert verify_audit_chain().ok


ACTOR_REFUSED = ("actor must be a saved User, a UUID or a UUID string like "
                 "12345678-1234-1234-1234-123456789abc")


@pytest.mark.parametrize("actor,message", [
    (str(ACTOR) + "\n", ACTOR_REFUSED), ("x" + str(ACTOR), ACTOR_REFUSED),
    (ACTOR.hex, ACTOR_REFUSED), (5, ACTOR_REFUSED), (("users", str(ACTOR)), ACTOR_REFUSED),
    (User(email="unsaved@example.com"), "actor is an unsaved User: save it first"),
])
def test_actor_misuse_is_refused(db, actor, message):
    with pytest.raises(ValidationError) as info:
        record_event(actor, "x.actor")
    assert str(info.value) == message
    assert AuditLog.select().count() == 0


def test_target_forms(db):
    actor = _actor()
    key = uuid.uuid4()
    cases = [(actor, ("users", str(ACTOR))), (("ads", 7), ("ads", "7")),
             (("models", key), ("models", str(key))), (("t" * 64, "i" * 64), ("t" * 64, "i" * 64)),
             (None, (None, None))]
    for target, expected in cases:
        row = AuditLog.get_by_id(record_event(None, "x.target", target=target).id)
        assert (row.target_type, row.target_id) == expected
    assert verify_audit_chain().ok


PAIR = "target must be a saved model instance or a (type, id) pair"


@pytest.mark.parametrize("target,message", [
    (("ads", True), "target id must be text, not bool"),
    (("ads", 1.5), "target id must be text, not float"),
    (("ads", None), "target id must be text, not NoneType"),
    (("ads", "1", "x"), PAIR), (["ads", "1"], PAIR), ("ads", PAIR), (5, PAIR),
    (("t" * 65, "1"), "target type is longer than 64 characters"),
    (("ads", "i" * 65), "target id is longer than 64 characters"),
    (("", "1"), "target type is empty"),
    ((5, "1"), "target type must be text, not int"),
    (("ads", "nul\x00"), "target id contains a control or invisible character (U+0000)"),
    (("ads", "\ud800"), "target id: contains NUL or an unpaired surrogate, which PostgreSQL "
                        "cannot store"),
    (User(email="unsaved@example.com"), "target is an unsaved User: save it first"),
])
def test_target_misuse_is_refused(db, target, message):
    with pytest.raises(ValidationError) as info:
        record_event(None, "x.target", target=target)
    assert str(info.value) == message
    assert AuditLog.select().count() == 0


def test_ip_forms(db):
    scoped = "fe80::1%" + "x" * 37  # 45 characters, the column's width
    cases = [(" 10.0.0.1 ", "10.0.0.1"), (ipaddress.ip_address("10.0.0.2"), "10.0.0.2"),
             (ipaddress.ip_address("2001:db8::1"), "2001:db8::1"),
             ("2001:0DB8:0000:0000:0000:0000:0000:0001", "2001:db8::1"), (scoped, scoped),
             (None, None)]
    for given, stored in cases:
        assert AuditLog.get_by_id(record_event(None, "x.ip", ip=given).id).ip == stored
    assert verify_audit_chain().ok


@pytest.mark.parametrize("ip,message", [
    ("fe80::1%" + "x" * 38, "ip: longer than 45 characters"),
    ("10.0.0.256", "ip: not an IPv4 or IPv6 address"), ("", "ip: not an IPv4 or IPv6 address"),
    (167772161, "ip: expected an address string, got int"),
    (b"10.0.0.1", "ip: expected an address string, got bytes"),
])
def test_ip_misuse_is_refused(db, ip, message):
    with pytest.raises(ValidationError) as info:
        record_event(None, "x.ip", ip=ip)
    assert str(info.value) == message
    assert AuditLog.select().count() == 0


def test_text_that_spells_a_nul_escape_is_stored_and_verifies(db):
    # "\\u0000" is six characters of text, not a NUL: JSON writes it "\\\\u0000"
    metadata = {"": "\\u0000", "k\\u0000": ["\\\\u0000", "a\\\\\\u0000"]}
    row = record_event(None, "x.text", metadata=metadata)
    assert AuditLog.get_by_id(row.id).metadata == metadata
    assert verify_audit_chain().ok
    for nul in ({"v": "\x00"}, {"v": "\\\x00"}, {"\x00": 1}, {"v": ["\\\\\x00"]}):
        with pytest.raises(ValidationError):
            record_event(None, "x.text", metadata=nul)
    assert AuditLog.select().count() == 1


def _deep(levels):
    node = value = {}
    for _ in range(levels):
        node["d"] = {}
        node = node["d"]
    return value


@pytest.mark.parametrize("metadata,message", [
    ([1], "metadata must be a dict with text keys, not list"),
    ({1: "x"}, "metadata must be a dict with text keys, not dict"),
    ({"v": 10**1001}, "metadata: integer longer than 1000 digits"),
    (_deep(65), "metadata: nested deeper than 64 levels"),
    ({"v": "\ud800"}, "metadata contains an unpaired surrogate, which UTF-8 cannot encode"),
])
def test_metadata_refusals_name_the_metadata(db, metadata, message):
    with pytest.raises(ValidationError) as info:
        record_event(None, "x.meta", metadata=metadata)
    assert str(info.value) == message
    assert AuditLog.select().count() == 0


def test_metadata_and_instant_are_stored_as_given(db):
    rows = [record_event(None, "x.meta"), record_event(None, "x.meta", metadata={}),
            record_event(None, "x.meta", metadata={"f": 2.0, "t": (1, 2)}, created_at=T0)]
    assert [AuditLog.get_by_id(r.id).metadata for r in rows] == [{}, {}, {"f": 2, "t": [1, 2]}]
    assert AuditLog.get_by_id(rows[2].id).created_at == T0
    assert json.dumps(AuditLog.get_by_id(rows[2].id).metadata) == '{"f": 2, "t": [1, 2]}'
    before = dt.datetime.now(UTC)
    row = record_event(None, "x.now")
    assert before <= AuditLog.get_by_id(row.id).created_at <= dt.datetime.now(UTC)
    action = "a" * 64
    assert AuditLog.get_by_id(record_event(None, action).id).action == action
    for deepest in (_deep(64), {"v": 10**1000 - 1}):  # the limits exactly
        assert AuditLog.get_by_id(record_event(None, "x.limit", metadata=deepest).id).metadata \
            == deepest
    assert verify_audit_chain().ok


# -- verification names each tamper ----------------------------------------------------------------

def _chain(n=4):
    actor = _actor()
    return [record_event(actor, f"event.{i}", target=("ads", i), metadata={"i": i, "s": "é"},
                         ip="10.0.0.1", created_at=T0 + dt.timedelta(minutes=i))
            for i in range(n)]


CONTENT = "row content does not match its hash"
LINK = "previous hash does not match: a row before it was deleted, inserted or reordered"
OTHER_ACTOR = uuid.UUID("11111111-2222-4333-8444-555555555555")


@pytest.mark.parametrize("column,value", [
    ("actor", OTHER_ACTOR), ("actor", None), ("action", "event.x"), ("target_type", "adz"),
    ("target_type", None), ("target_id", "99"), ("target_id", None),
    ("metadata", {"i": 1, "s": "e"}), ("metadata", {"i": 1}), ("metadata", {"i": 1.5, "s": "é"}),
    ("ip", "10.0.0.2"), ("ip", None), ("created_at", T0 + dt.timedelta(minutes=1, microseconds=1)),
    ("row_hash", "f" * 64),
])
def test_a_changed_column_is_named_at_its_row(db, column, value):
    rows = _chain()
    User.create(id=OTHER_ACTOR, email="other@example.com")
    with db.atomic() as savepoint:
        _drop_triggers(db)
        AuditLog.update({column: value}).where(AuditLog.id == rows[1].id).execute()
        report = verify_audit_chain()
        assert (report.ok, report.broken_id, report.checked, report.reason) == \
            (False, rows[1].id, 2, CONTENT)
        savepoint.rollback()
    assert verify_audit_chain() == audit.ChainReport(4)


def test_a_changed_prev_hash_is_a_broken_link(db):
    rows = _chain()
    with db.atomic() as savepoint:
        _drop_triggers(db)
        AuditLog.update(prev_hash="e" * 64).where(AuditLog.id == rows[2].id).execute()
        assert verify_audit_chain() == audit.ChainReport(3, rows[2].id, LINK)
        # checkpoints met before the break are counted in the report
        first = {"v": 1, "last_id": rows[0].id, "row_hash": rows[0].row_hash, "rows": 1,
                 "at": "t0"}
        first["signature"] = _signed(first)
        assert verify_audit_chain(checkpoints=[first], key=KEY) == \
            audit.ChainReport(3, rows[2].id, LINK, 1)
        savepoint.rollback()


def test_rows_are_checked_in_id_order_whatever_order_they_were_written(db):
    # the second row of the chain is written first, with the larger id
    first = dict(actor=None, action="a.first", target_type=None, target_id=None, metadata={},
                 ip=None, created_at=T0, prev_hash=GENESIS)
    first["row_hash"] = row_digest(GENESIS, None, "a.first", None, None, {}, None, T0)
    second = dict(first, action="a.second", prev_hash=first["row_hash"])
    second["row_hash"] = row_digest(first["row_hash"], None, "a.second", None, None, {}, None,
                                    T0)
    AuditLog.insert(id=1_000_010, **second).execute()
    AuditLog.insert(id=1_000_005, **first).execute()
    assert verify_audit_chain() == audit.ChainReport(2)
    assert verify_audit_chain(chunk_size=1) == audit.ChainReport(2)


def test_deleted_inserted_and_reordered_rows_are_broken_links(db):
    rows = _chain()
    with db.atomic() as savepoint:
        _drop_triggers(db)
        AuditLog.delete().where(AuditLog.id == rows[0].id).execute()
        assert verify_audit_chain() == audit.ChainReport(1, rows[1].id, LINK)
        savepoint.rollback()
    stolen = AuditLog.get_by_id(rows[3].id)
    with db.atomic() as savepoint:  # a forged row chained to the head, without the hash
        forged = AuditLog.create(actor=None, action="forged", metadata={}, created_at=T0,
                                 prev_hash=stolen.row_hash, row_hash="a" * 64)
        assert verify_audit_chain() == audit.ChainReport(5, forged.id, CONTENT)
        savepoint.rollback()
    with db.atomic() as savepoint:  # an intact copy of a row appended again
        AuditLog.insert(actor=stolen.actor_id, action=stolen.action, metadata=stolen.metadata,
                        created_at=stolen.created_at, prev_hash=stolen.prev_hash,
                        row_hash="b" * 64).execute()
        assert verify_audit_chain() == audit.ChainReport(5, AuditLog.select().order_by(
            AuditLog.id.desc()).first().id, LINK)
        savepoint.rollback()
    assert verify_audit_chain().ok


def test_stored_metadata_that_is_not_json_is_a_content_mismatch(db, backend):
    rows = _chain(2)
    if backend == "postgres":  # jsonb parses on the way in: nothing unparseable can be stored
        return
    with db.atomic() as savepoint:
        _drop_triggers(db)
        db.execute_sql("UPDATE audit_logs SET metadata = '{\"i\": 1' WHERE id = ?", (rows[1].id,))
        assert verify_audit_chain() == audit.ChainReport(2, rows[1].id, CONTENT)
        savepoint.rollback()


def test_chunk_size_changes_nothing_but_memory(db):
    rows = _chain(5)
    for size in (1, 2, 5, 1_000_000):
        assert verify_audit_chain(chunk_size=size) == audit.ChainReport(5)
    with db.atomic() as savepoint:
        _drop_triggers(db)
        AuditLog.update(action="forged").where(AuditLog.id == rows[3].id).execute()
        for size in (1, 3, 2000):
            assert verify_audit_chain(chunk_size=size) == audit.ChainReport(4, rows[3].id,
                                                                           CONTENT)
        savepoint.rollback()
    for size, message in ((0, "must be from 1 to 1000000"),
                          (1_000_001, "must be from 1 to 1000000"),
                          ("10", "must be an integer, not str"),
                          (2.0, "must be an integer, not float"),
                          (None, "must be an integer, not NoneType"),
                          (True, "must be an integer, not bool")):
        with pytest.raises(ValidationError) as info:
            verify_audit_chain(chunk_size=size)
        assert str(info.value) == f"chunk_size {message}"


def test_an_empty_log_verifies(db):
    assert verify_audit_chain() == audit.ChainReport(0)


# -- checkpoints ----------------------------------------------------------------------------------

def _signed(fields, key=KEY):
    """The checkpoint signature, spelled out: HMAC-SHA256 of the sorted, compact fields."""
    message = (f'{{"at":"{fields["at"]}","last_id":{json.dumps(fields["last_id"])},'
               f'"row_hash":"{fields["row_hash"]}","rows":{fields["rows"]},"v":1}}')
    return hmac.new(key.encode(), message.encode(), hashlib.sha256).hexdigest()


def test_a_checkpoint_line_to_the_byte(db):
    rows = _chain(3)
    before = dt.datetime.now(UTC).replace(microsecond=0)
    line = checkpoint(KEY)
    after = dt.datetime.now(UTC)
    cp = json.loads(line)
    assert list(cp) == ["v", "last_id", "row_hash", "rows", "at", "signature"]
    assert (cp["v"], cp["last_id"], cp["row_hash"], cp["rows"]) == \
        (1, rows[-1].id, rows[-1].row_hash, 3)
    assert before <= dt.datetime.fromisoformat(cp["at"]) <= after
    assert cp["at"].endswith("+00:00") and len(cp["at"]) == 25  # seconds, no fraction
    assert cp["signature"] == _signed(cp)
    assert line == json.dumps(cp, separators=(",", ":"))
    again = json.loads(checkpoint(KEY.encode()))  # bytes or text: the same key
    assert again["signature"] == _signed(again) and again["rows"] == 3


def test_an_empty_logs_checkpoint(db):
    cp = json.loads(checkpoint(KEY))
    assert (cp["last_id"], cp["row_hash"], cp["rows"]) == (None, GENESIS, 0)
    assert cp["signature"] == _signed(cp)
    assert verify_audit_chain(checkpoints=[cp], key=KEY) == audit.ChainReport(0, checkpoints=1)


def test_checkpoints_are_met_in_id_order_and_counted(db):
    rows = _chain(2)
    first = checkpoint(KEY)
    twin = checkpoint(KEY)
    rows += _chain_more(2)
    last = json.loads(checkpoint(KEY))
    empty_log = {"v": 1, "last_id": None, "row_hash": GENESIS, "rows": 0, "at": "x"}
    empty_log["signature"] = _signed(empty_log)
    report = verify_audit_chain(checkpoints=[last, first, empty_log, twin], key=KEY)
    assert report == audit.ChainReport(4, checkpoints=4)
    assert verify_audit_chain(checkpoints=(line for line in [first.encode()]), key=KEY) == \
        audit.ChainReport(4, checkpoints=1)


def _chain_more(n):
    return [record_event(None, f"more.{i}") for i in range(n)]


def test_a_checkpoint_whose_head_row_was_removed_is_named(db):
    rows = _chain(4)
    cp = {"v": 1, "last_id": rows[1].id, "row_hash": rows[1].row_hash, "rows": 2, "at": "t1"}
    cp["signature"] = _signed(cp)
    missing = ("is missing but the checkpoint signed at t1 names it as the head: rows were "
               "deleted from the end or the log was rewritten")
    first = {"v": 1, "last_id": rows[0].id, "row_hash": rows[0].row_hash, "rows": 1, "at": "t0"}
    first["signature"] = _signed(first)
    with db.atomic() as savepoint:
        _drop_triggers(db)
        AuditLog.delete().where(AuditLog.id == rows[1].id).execute()
        assert verify_audit_chain(checkpoints=[cp], key=KEY) == \
            audit.ChainReport(1, rows[1].id, missing)
        assert verify_audit_chain(checkpoints=[first, cp], key=KEY) == \
            audit.ChainReport(1, rows[1].id, missing, 1)
        savepoint.rollback()
    beyond = {**cp, "last_id": rows[3].id + 5, "rows": 9}
    beyond["signature"] = _signed(beyond)
    assert verify_audit_chain(checkpoints=[cp, beyond], key=KEY) == \
        audit.ChainReport(4, rows[3].id + 5, missing, 1)


@pytest.mark.parametrize("change", ["row_hash", "rows"])
def test_a_checkpoint_that_disagrees_with_its_row_is_named(db, change):
    rows = _chain(3)
    cp = {"v": 1, "last_id": rows[1].id, "row_hash": rows[1].row_hash, "rows": 2, "at": "t1"}
    cp[change] = "c" * 64 if change == "row_hash" else 1
    cp["signature"] = _signed(cp)
    good = {"v": 1, "last_id": rows[0].id, "row_hash": rows[0].row_hash, "rows": 1, "at": "t0"}
    good["signature"] = _signed(good)
    assert verify_audit_chain(checkpoints=[good, cp], key=KEY) == audit.ChainReport(
        2, rows[1].id, "differs from the checkpoint signed at t1: the log was rewritten up to it",
        1)


def test_the_checkpoint_key(monkeypatch):
    monkeypatch.delenv("WITHIN_DB_AUDIT_KEY", raising=False)
    assert audit_key("x" * 32) == b"x" * 32
    assert audit_key(b"\xff" * 32) == b"\xff" * 32
    assert audit_key("é" * 16) == ("é" * 16).encode()  # 32 bytes of UTF-8
    short_message = ("WITHIN_DB_AUDIT_KEY is shorter than 32 characters; use a random secret "
                     "such as the output of `openssl rand -hex 32`")
    unset_message = ("WITHIN_DB_AUDIT_KEY is not set: checkpoints are signed with a secret of "
                     "at least 32 characters (e.g. `openssl rand -hex 32`)")
    for short in ("x" * 31, b"x" * 31, "é" * 15 + "x"):
        with pytest.raises(ConfigurationError) as info:
            audit_key(short)
        assert str(info.value) == short_message
    for environment in (None, ""):
        if environment is not None:
            monkeypatch.setenv("WITHIN_DB_AUDIT_KEY", environment)
        with pytest.raises(ConfigurationError) as info:
            audit_key()
        assert str(info.value) == unset_message
    monkeypatch.setenv("WITHIN_DB_AUDIT_KEY", KEY)
    assert audit_key() == KEY.encode()
    assert audit_key("z" * 40) == b"z" * 40  # an explicit key wins
    for bad, kind in ((5, "int"), (["k"], "list"), (3.0, "float"),
                      (bytearray(b"y" * 32), "bytearray")):
        with pytest.raises(ValidationError) as info:
            audit_key(bad)
        assert str(info.value) == f"key must be text or bytes, not {kind}"


def test_verification_uses_the_given_key(db, monkeypatch):
    _chain(1)
    monkeypatch.setenv("WITHIN_DB_AUDIT_KEY", "e" * 32)
    line = checkpoint(KEY)
    assert verify_audit_chain(checkpoints=[line], key=KEY).checkpoints == 1
    with pytest.raises(ValidationError, match="invalid signature"):
        verify_audit_chain(checkpoints=[line])  # the environment's key differs
    monkeypatch.delenv("WITHIN_DB_AUDIT_KEY")
    assert verify_audit_chain(checkpoints=None) == audit.ChainReport(1)


def _malformed(good):
    def without(name):
        return {k: v for k, v in good.items() if k != name}
    return [
        {**good, "v": 2}, {**good, "v": "1"}, {**good, "last_id": True},
        {**good, "last_id": 1.0}, {**good, "rows": True}, {**good, "rows": "3"},
        {**good, "row_hash": None}, {**good, "at": 5}, {**good, "signature": None},
        {**good, "extra": 1}, without("v"), without("signature"), without("rows"),
        [good], b"[1]", "null", 5,
    ]


MALFORMED = ("checkpoint 2 is malformed; expected the fields v, last_id, row_hash, rows, at, "
             "signature")


def test_malformed_checkpoints_are_refused_by_position(db):
    _chain(2)
    good = json.loads(checkpoint(KEY))
    for bad in _malformed(good):
        with pytest.raises(ValidationError) as info:
            verify_audit_chain(checkpoints=[good, bad], key=KEY)
        assert str(info.value) == MALFORMED
    for bad in ("not json", b"{", ""):
        with pytest.raises(ValidationError) as info:
            verify_audit_chain(checkpoints=[good, bad], key=KEY)
        assert str(info.value) == ("checkpoint 2 is not JSON; expected one line of "
                                   "`within-db audit checkpoint`")
    signed_at = good["at"]
    for forged in ({**good, "rows": 3}, {**good, "at": "2000-01-01T00:00:00+00:00"},
                   {**good, "last_id": None}, {**good, "signature": good["signature"].upper()},
                   {**good, "row_hash": GENESIS}):
        with pytest.raises(ValidationError) as info:
            verify_audit_chain(checkpoints=[forged], key=KEY)
        assert str(info.value) == (f"checkpoint 1 (signed at {forged['at']}) has an invalid "
                                   "signature: it was altered or signed with another "
                                   "WITHIN_DB_AUDIT_KEY")
    assert signed_at != "2000-01-01T00:00:00+00:00"


@pytest.mark.parametrize("checkpoints", ["line", b"line", {"v": 1}, 5])
def test_checkpoints_must_be_a_collection(db, checkpoints):
    with pytest.raises(ValidationError) as info:
        verify_audit_chain(checkpoints=checkpoints, key=KEY)
    assert str(info.value) == "checkpoints must be a list of checkpoint lines or dicts"


# -- serialised appends ----------------------------------------------------------------------------

WRITERS = 4
APPENDS = 25


def _race(db, work):
    """Run ``work(writer)`` in WRITERS threads (one connection each), started together."""
    start = threading.Barrier(WRITERS)
    errors = []

    def run(writer):
        try:
            with db.connection_context():
                start.wait()
                work(writer)
        except BaseException as exc:  # reported below, with the writer
            errors.append((writer, repr(exc)))

    threads = [threading.Thread(target=run, args=(w,)) for w in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert errors == []


@pytest.mark.parametrize("in_transaction", [True, False], ids=["callers", "own"])
def test_concurrent_appends_keep_one_chain(migrated_fresh_db, in_transaction):
    # Without the append lock (PostgreSQL's advisory lock, SQLite's write transaction) two
    # writers read the same head and the chain forks. Inside a caller's transaction each
    # writer keeps it open a moment after the append, as a caller doing more work would,
    # which makes the race near certain; on their own, appends race on every statement.
    db = migrated_fresh_db

    def work(writer):
        for i in range(APPENDS):
            if in_transaction:
                with db.atomic():
                    record_event(None, "race.append", metadata={"w": writer, "i": i})
                    time.sleep(0.002)
            else:
                record_event(None, "race.append", metadata={"w": writer, "i": i})

    _race(db, work)
    with db.connection_context():
        rows = list(AuditLog.select(AuditLog.prev_hash, AuditLog.row_hash)
                    .order_by(AuditLog.id).tuples())
        report = verify_audit_chain()
    assert len(rows) == WRITERS * APPENDS
    assert len({prev for prev, _ in rows}) == len(rows), "two rows chained to one head"
    assert report == audit.ChainReport(WRITERS * APPENDS)


def test_checkpoints_taken_during_appends_each_name_a_consistent_head(migrated_fresh_db,
                                                                      monkeypatch):
    # A checkpoint reads the head and the row count in two statements: only the append lock
    # keeps a commit from landing between them.
    monkeypatch.setenv("WITHIN_DB_AUDIT_KEY", KEY)
    db = migrated_fresh_db
    lines = []

    def work(writer):
        for i in range(APPENDS):
            if writer == 0:
                lines.append(checkpoint())
            else:
                record_event(None, "race.checkpoint", metadata={"w": writer, "i": i})

    _race(db, work)
    with db.connection_context():
        report = verify_audit_chain(checkpoints=lines)
    assert report == audit.ChainReport((WRITERS - 1) * APPENDS, checkpoints=APPENDS)
