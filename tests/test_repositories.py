"""Repositories: owner scoping through RBAC, keyset pages with signed cursors, allow-listed
filters, writes through the services, and the query count each method documents."""

import base64
import datetime as dt
import json
from decimal import Decimal

import pytest

from within_db.errors import (
    ConflictError,
    NotFoundError,
    NotMigratedError,
    PermissionDeniedError,
    ValidationError,
)
from within_db.models.campaigns import Ad, Campaign
from within_db.models.ml_system import ModelVersion, PredictionLog
from within_db.models.users import AccessToken, Credential, User
from within_db.repositories import (
    CampaignRepository,
    ModelRegistryRepository,
    PredictionLogRepository,
    SavedQueryRepository,
    UserRepository,
)
from within_db.repositories.base import CURSOR_SECRET_ENV
from within_db.repositories.campaigns import EDIT, EDIT_ALL, VIEW_ALL
from within_db.services import users as user_svc
from within_db.services.ml_system import log_predictions

from .helpers import (
    DEFINITION,
    make_ad,
    make_campaign,
    make_model,
    make_saved_query,
    make_user,
    make_version,
    statements,
    user_with,
)

UTC = dt.UTC
CAMPAIGN = dict(name="Launch", objective="sales", platform="meta", start_date="2026-02-01",
                total_budget_micros="250.5")


def campaigns_of(owner, n, start=dt.datetime(2026, 1, 1, tzinfo=UTC)):
    # distinct created_at, plus two ties to exercise the id tie-break
    made = []
    for i in range(n):
        at = start + dt.timedelta(minutes=i if i not in (3, 4) else 3)
        made.append(make_campaign(owner=owner, created_at=at, updated_at=at))
    return made


def all_pages(list_method, **kw):
    items, cursor, pages = [], None, 0
    while True:
        page = list_method(cursor=cursor, **kw)
        items.extend(page.items)
        pages += 1
        if page.next_cursor is None:
            return items, pages
        cursor = page.next_cursor


# -- scoping --------------------------------------------------------------------------------


def test_a_user_sees_only_their_own_campaigns(db):
    alice, bob = user_with(), user_with()
    mine = campaigns_of(alice, 3)
    campaigns_of(bob, 2)
    page = CampaignRepository(alice).list()
    assert {c.id for c in page.items} == {c.id for c in mine}
    with pytest.raises(NotFoundError):
        CampaignRepository(alice).get(make_campaign(owner=bob).id)
    with pytest.raises(PermissionDeniedError):
        CampaignRepository(alice).list({"owner_id": bob.id})
    with pytest.raises(NotFoundError):
        CampaignRepository(alice).user_campaigns(bob.id)


def test_view_all_sees_everyone_and_filters_by_owner(db):
    alice, bob, auditor = user_with(), user_with(), user_with(VIEW_ALL)
    campaigns_of(alice, 2)
    bobs = campaigns_of(bob, 3)
    repo = CampaignRepository(auditor)
    everyone = {c.id for c in repo.list(limit=500).items}
    assert {c.id for c in Campaign.select()} == everyone
    only_bob = repo.list({"owner_id": str(bob.id)}).items
    assert [c.id for c in only_bob] == [c.id for c in reversed(bobs)]
    assert repo.get(bobs[0].id).campaign.id == bobs[0].id
    assert len(repo.user_campaigns(bob.id)) == 3


def test_writes_need_edit_and_edit_all_for_others(db):
    viewer, editor, boss = user_with(VIEW_ALL), user_with(EDIT), user_with(EDIT, EDIT_ALL)
    with pytest.raises(PermissionDeniedError):
        CampaignRepository(viewer).create(CAMPAIGN)
    created = CampaignRepository(editor).create(CAMPAIGN)
    assert created.owner_id == editor.id and created.total_budget_micros == Decimal("250.5")
    with pytest.raises(NotFoundError):  # cannot even see it
        CampaignRepository(user_with(EDIT)).update(created.id, {"name": "Hijack"})
    with pytest.raises(PermissionDeniedError):  # sees it, may not change it
        CampaignRepository(user_with(EDIT, VIEW_ALL)).update(created.id, {"name": "Hijack"})
    renamed = CampaignRepository(boss).update(created.id, {"name": "Renamed",
                                                           "end_date": "2026-05-01"})
    assert renamed.name == "Renamed" and renamed.end_date == dt.date(2026, 5, 1)
    assert renamed.updated_at > created.updated_at
    assert Campaign.get_by_id(created.id).name == "Renamed"
    ad = CampaignRepository(editor).add_ad(created.id, {"name": "Banner"})
    assert CampaignRepository(editor).get(created.id).ads[0].id == ad.id
    CampaignRepository(editor).update_ad(ad.id, {"headline": "Now 20% off"})
    assert Ad.get_by_id(ad.id).headline == "Now 20% off"
    with pytest.raises(NotFoundError):
        CampaignRepository(user_with(EDIT)).delete_ad(ad.id)
    CampaignRepository(editor).delete_ad(ad.id)
    CampaignRepository(editor).delete(created.id)
    assert not Campaign.select().where(Campaign.id == created.id).exists()


def test_constraint_violations_become_specific_errors(db):
    editor = user_with(EDIT)
    with pytest.raises(ValidationError, match="campaigns_dates_check"):
        CampaignRepository(editor).create({**CAMPAIGN, "end_date": "2026-01-01"})
    assert not Campaign.select().where(Campaign.owner == editor.id).exists()
    with pytest.raises(ValidationError, match="invalid CampaignCreate: platform"):
        CampaignRepository(editor).create({**CAMPAIGN, "platform": "myspace"})
    with pytest.raises(ValidationError, match="invalid CampaignUpdate: owner_id"):
        CampaignRepository(editor).update(make_campaign(owner=editor).id,
                                          {"owner_id": str(user_with().id)})


@pytest.mark.parametrize("bad_id", ["not-a-uuid", "", None, 12, "1' OR '1'='1"])
def test_malformed_ids_are_not_found(db, bad_id):
    with pytest.raises(NotFoundError):
        CampaignRepository(user_with(VIEW_ALL)).get(bad_id)
    with pytest.raises(NotFoundError):
        PredictionLogRepository(user_with("predictions.view")).get(bad_id)


# -- keyset pages and cursors ---------------------------------------------------------------


@pytest.mark.parametrize("order", ["-created_at", "created_at"])
def test_pages_cover_every_row_once_in_order(db, order):
    alice = user_with()
    made = campaigns_of(alice, 23)
    items, pages = all_pages(CampaignRepository(alice).list, order=order, limit=5)
    assert pages == 5
    assert len(items) == 23 and len({c.id for c in items}) == 23
    expected = sorted(made, key=lambda c: (c.created_at, str(c.id)),
                      reverse=order.startswith("-"))
    assert [c.id for c in items] == [c.id for c in expected]


def test_filters_apply_and_are_bound_into_the_cursor(db):
    alice = user_with()
    for status in ("active", "paused") * 6:
        make_campaign(owner=alice, status=status)
    repo = CampaignRepository(alice)
    first = repo.list({"status": "paused"}, limit=4)
    assert {c.status for c in first.items} == {"paused"}
    rest, _ = all_pages(repo.list, filters={"status": "paused"}, limit=4)
    assert len(rest) == 6
    with pytest.raises(ValidationError, match="invalid cursor"):
        repo.list({"status": "active"}, cursor=first.next_cursor, limit=4)
    with pytest.raises(ValidationError, match="invalid cursor"):
        repo.list({"status": "paused"}, cursor=first.next_cursor, order="created_at", limit=4)
    with pytest.raises(ValidationError, match="invalid cursor"):
        CampaignRepository(user_with()).list({"status": "paused"}, cursor=first.next_cursor,
                                             limit=4)


def _forge(token, keys):
    body, sig = token.split(".")
    payload = base64.urlsafe_b64encode(json.dumps(keys).encode()).rstrip(b"=").decode()
    return f"{payload}.{sig}"


def test_cursors_cannot_be_forged(db):
    alice = user_with()
    campaigns_of(alice, 6)
    repo = CampaignRepository(alice)
    token = repo.list(limit=2).next_cursor
    body, sig = token.split(".")
    hostile = [
        "garbage", "a.b.c", "." * 3, "x" * 5000, f"{body}.{sig[:-2]}AA",
        f"{body[:-2]}AA.{sig}", _forge(token, ["2020-01-01T00:00:00+00:00", "x"]),
        _forge(token, ["'; DROP TABLE campaigns; --"]), f"{body}.", f".{sig}", token + "=",
    ]
    for bad in hostile:
        with pytest.raises(ValidationError, match="invalid cursor"):
            repo.list(cursor=bad, limit=2)
    assert len(repo.list(cursor=token, limit=2).items) == 2
    assert repo.list(cursor="", limit=2).items == repo.list(limit=2).items  # "" = first page


def test_filters_and_limits_are_allow_listed(db):
    repo = CampaignRepository(user_with())
    for filters in ({"name": "x"}, {"owner": "x"}, {"status; --": "x"}):
        with pytest.raises(ValidationError, match="unknown filter"):
            repo.list(filters)
    for filters in ({"status": "bogus"}, {"created_after": "2026-01-01T00:00:00"},
                    {"owner_id": "nope"}, {"status": 5}):
        with pytest.raises(ValidationError):
            repo.list(filters)
    for limit in (0, -1, 501, True, "5", 2.0):
        with pytest.raises(ValidationError, match="limit"):
            repo.list(limit=limit)
    with pytest.raises(ValidationError, match="unknown order"):
        repo.list(order="name; DROP TABLE campaigns")


# -- query counts ---------------------------------------------------------------------------


def test_campaign_query_counts(db):
    alice, auditor = user_with(EDIT), user_with(VIEW_ALL)
    for c in campaigns_of(alice, 4):
        make_ad(c)
        make_ad(c)
    first = Campaign.select().where(Campaign.owner == alice.id).first()
    expectations = [  # (what, actor, call, statements): a fresh repository each time
        ("own list", alice, lambda r: r.list(limit=2), 2),  # permission + page
        ("own list by owner", alice, lambda r: r.list({"owner_id": alice.id}, limit=2), 1),
        ("own user campaigns", alice, lambda r: r.user_campaigns(alice.id), 3),
        ("own get", alice, lambda r: r.get(first.id), 2),
        ("other's get", auditor, lambda r: r.get(first.id), 3),
        ("other's user campaigns", auditor, lambda r: r.user_campaigns(alice.id), 4),
        ("create", alice, lambda r: r.create(CAMPAIGN), 2),
        ("update", alice, lambda r: r.update(first.id, {"name": "x"}), 3),
    ]
    for what, actor, call, expected in expectations:
        with statements() as q:
            result = call(CampaignRepository(actor))
        assert len(q) == expected, (what, q)
        if what == "own user campaigns":
            assert sum(len(c.ads) for c in result) == 8


# -- users ----------------------------------------------------------------------------------


def test_users_repository_creates_through_the_service_and_hides_hashes(db):
    admin = user_with("users.manage")
    created = UserRepository(admin).create({"email": " New@Example.com ",
                                            "password": "correct horse battery staple",
                                            "full_name": "New Person"})
    assert created.email == "new@example.com"
    assert Credential.get(Credential.user == created.id).password_hash.startswith("$argon2id$")
    assert "hash" not in json.dumps(created.model_dump(mode="json"))
    with pytest.raises(ConflictError):
        UserRepository(admin).create({"email": "new@example.com",
                                      "password": "correct horse battery staple"})
    with pytest.raises(ValidationError, match="password"):
        UserRepository(admin).create({"email": "x@example.com", "password": "short"})
    with pytest.raises(PermissionDeniedError):
        UserRepository(user_with()).create({"email": "y@example.com",
                                            "password": "correct horse battery staple"})


def test_users_see_themselves_and_managers_see_everyone(db):
    alice, admin = user_with(), user_with("users.manage")
    assert UserRepository(alice).get(alice.id).id == alice.id
    with pytest.raises(NotFoundError):
        UserRepository(alice).get(admin.id)
    with pytest.raises(PermissionDeniedError):
        UserRepository(alice).list()
    assert UserRepository(admin).get(alice.id).email == alice.email
    items, _ = all_pages(UserRepository(admin).list, limit=3)
    assert [u.email for u in items] == sorted(u.email for u in items)
    assert UserRepository(alice).update(alice.id, {"full_name": "Alice A."}).full_name == \
        "Alice A."
    with pytest.raises(ValidationError):
        UserRepository(admin).update(admin.id, {"is_active": False})
    with pytest.raises(PermissionDeniedError):
        UserRepository(alice).update(admin.id, {"is_active": False})


def test_deactivating_a_user_revokes_their_tokens(db):
    alice, admin = user_with(), user_with("users.manage")
    raw, _ = user_svc.issue_token(alice)
    assert user_svc.verify_token(raw) is not None
    assert UserRepository(admin).update(alice.id, {"is_active": False}).is_active is False
    assert user_svc.verify_token(raw) is None
    assert not AccessToken.select().where(AccessToken.user == alice.id,
                                          AccessToken.revoked_at.is_null()).exists()


# -- model registry and prediction logs -----------------------------------------------------


def test_registry_permissions_versions_and_stages(db):
    trainer, deployer, anyone = (user_with("models.train"), user_with("models.deploy"),
                                 user_with())
    with pytest.raises(PermissionDeniedError):
        ModelRegistryRepository(anyone).create({"name": "ctr", "task": "classification"})
    model = ModelRegistryRepository(trainer).create({"name": "ctr", "task": "classification"})
    assert model.owner_id == trainer.id
    with pytest.raises(ConflictError):
        ModelRegistryRepository(trainer).create({"name": "ctr", "task": "ranking"})
    registry = ModelRegistryRepository(trainer)
    versions = [registry.create_version(model.id, {"artifact_uri": f"s3://m/{i}"})
                for i in range(1, 6)]
    assert [v.version for v in versions] == [1, 2, 3, 4, 5]
    items, pages = all_pages(ModelRegistryRepository(anyone).versions, model_id=model.id,
                             limit=2)
    assert [v.version for v in items] == [5, 4, 3, 2, 1] and pages == 3
    with pytest.raises(PermissionDeniedError):
        registry.update_version(versions[0].id, {"stage": "production"})
    deploy = ModelRegistryRepository(deployer)
    deploy.update_version(versions[0].id, {"stage": "production"})
    assert deploy.update_version(versions[1].id, {"stage": "production"}).stage == "production"
    assert ModelVersion.get_by_id(versions[0].id).stage == "archived"
    assert [m.name for m in ModelRegistryRepository(anyone).list({"task": "classification"})
            .items] == ["ctr"]


def test_prediction_logs_page_without_gaps_and_need_permission(db):
    version = make_version()
    other = make_version()
    log_predictions(version, ({"request_id": f"r{i}", "score": i / 100} for i in range(57)))
    log_predictions(other, ({"request_id": f"o{i}", "score": 0.5} for i in range(5)))
    with pytest.raises(PermissionDeniedError):
        PredictionLogRepository(user_with()).list()
    repo = PredictionLogRepository(user_with("predictions.view"))
    items, pages = all_pages(repo.list, filters={"model_version_id": version.id}, limit=10)
    ids = [i.id for i in items]
    assert len(ids) == 57 == len(set(ids)) and ids == sorted(ids, reverse=True) and pages == 6
    assert {i.model_version_id for i in items} == {version.id}
    with statements() as q:
        repo.list({"model_version_id": version.id}, limit=10)
    assert len(q) == 1  # permission cached by the repository
    first = PredictionLog.select().order_by(PredictionLog.id).first()
    assert repo.get(first.id).request_id == first.request_id


# -- saved queries --------------------------------------------------------------------------


def test_saved_queries_are_owner_scoped(db):
    alice, bob, analyst = user_with(), user_with(), user_with("analytics.run_any")
    mine = SavedQueryRepository(alice).create({"name": "Clicks", "definition": DEFINITION})
    make_saved_query(owner=bob)
    assert [q.id for q in SavedQueryRepository(alice).list().items] == [mine.id]
    with pytest.raises(PermissionDeniedError):
        SavedQueryRepository(bob).list({"owner_id": alice.id})
    with pytest.raises(NotFoundError):
        SavedQueryRepository(bob).get(mine.id)
    assert SavedQueryRepository(analyst).list({"owner_id": alice.id}).items[0].id == mine.id
    with pytest.raises(NotFoundError):  # may read it, not change it
        SavedQueryRepository(analyst).update(mine.id, {"name": "Mine now"})
    with pytest.raises(ValidationError):
        SavedQueryRepository(alice).update(mine.id, {"definition": {"dataset": "nope"}})
    with pytest.raises(ConflictError):
        SavedQueryRepository(alice).create({"name": "Clicks", "definition": DEFINITION})
    assert SavedQueryRepository(alice).update(mine.id, {"name": "Renamed"}).name == "Renamed"
    SavedQueryRepository(alice).delete(mine.id)
    assert SavedQueryRepository(alice).list().items == []


def test_repositories_refuse_a_missing_actor(db):
    for repo in (CampaignRepository, UserRepository, SavedQueryRepository):
        with pytest.raises(ValidationError):
            repo(None)
    with pytest.raises(ValidationError):
        CampaignRepository(make_model())


def test_documented_query_counts_of_the_other_repositories(db):
    admin = user_with("users.manage", "predictions.view", "analytics.run_any")
    alice = user_with()
    version = make_version()
    log_predictions(version, ({"request_id": f"q{i}", "score": 0.1} for i in range(5)))
    log = PredictionLog.select().first()
    saved = make_saved_query(owner=alice)
    expectations = [
        ("own user", UserRepository, alice, lambda r: r.get(alice.id), 1),
        ("other user", UserRepository, admin, lambda r: r.get(alice.id), 2),
        ("users", UserRepository, admin, lambda r: r.list(limit=2), 2),
        ("model", ModelRegistryRepository, alice, lambda r: r.get(version.model_id), 1),
        ("models", ModelRegistryRepository, alice, lambda r: r.list(), 1),
        ("versions", ModelRegistryRepository, alice, lambda r: r.versions(version.model_id), 1),
        ("log", PredictionLogRepository, admin, lambda r: r.get(log.id), 2),
        ("logs", PredictionLogRepository, admin, lambda r: r.list(limit=2), 2),
        ("own queries", SavedQueryRepository, alice, lambda r: r.list(), 1),
        ("other's queries", SavedQueryRepository, admin,
         lambda r: r.list({"owner_id": alice.id}), 2),
        ("own query", SavedQueryRepository, alice, lambda r: r.get(saved.id), 1),
        ("other's query", SavedQueryRepository, admin, lambda r: r.get(saved.id), 2),
    ]
    for what, repository, actor, call, expected in expectations:
        with statements() as q:
            call(repository(actor))
        assert len(q) == expected, (what, q)


def test_cursors_are_signed_with_the_configured_secret(db, monkeypatch):
    alice = user_with(EDIT)
    campaigns_of(alice, 4)
    monkeypatch.setenv(CURSOR_SECRET_ENV, "first secret")
    token = CampaignRepository(alice).list(limit=2).next_cursor
    # another process with the same secret continues the walk
    assert len(CampaignRepository(alice).list(limit=2, cursor=token).items) == 2
    monkeypatch.setenv(CURSOR_SECRET_ENV, "rotated secret")
    with pytest.raises(ValidationError, match="invalid cursor"):
        CampaignRepository(alice).list(limit=2, cursor=token)
    # nor does a cursor of one repository open another's list
    monkeypatch.delenv(CURSOR_SECRET_ENV)
    for i in range(3):
        make_saved_query(owner=alice, name=f"q{i}")
    saved = SavedQueryRepository(alice).list(limit=1).next_cursor
    with pytest.raises(ValidationError, match="invalid cursor"):
        CampaignRepository(alice).list(limit=2, cursor=saved)


# -- the API boundary: hostile callers get WithinDBError subclasses, never driver errors -------

REPOSITORIES = (CampaignRepository, ModelRegistryRepository, PredictionLogRepository,
                SavedQueryRepository, UserRepository)


def test_every_public_repository_method_wears_the_boundary():
    bare = [f"{cls.__name__}.{name}" for cls in REPOSITORIES
            for name, member in vars(cls).items()
            if callable(member) and not name.startswith("_")
            and not getattr(member, "__within_db_public__", False)]
    assert bare == []


@pytest.mark.parametrize("name,call", [
    ("CampaignRepository.get", lambda actor: CampaignRepository(actor).get(
        "00000000-0000-4000-8000-000000000000")),
    ("ModelRegistryRepository.list", lambda actor: ModelRegistryRepository(actor).list()),
    ("SavedQueryRepository.list", lambda actor: SavedQueryRepository(actor).list()),
])
def test_an_unmigrated_database_is_named_not_a_driver_error(fresh_db, name, call):
    actor = User(id="00000000-0000-4000-8000-000000000001", email="a@example.com")
    with pytest.raises(NotMigratedError) as info:
        call(actor)
    assert str(info.value) == ("the schema is missing a table or column; run `within-db "
                               "migrate up`")
    assert fresh_db.get_tables() == []


@pytest.mark.parametrize("repository", [CampaignRepository, ModelRegistryRepository,
                                        SavedQueryRepository])
@pytest.mark.parametrize("kwargs,message", [
    ({"filters": "status"}, "filters must be a dict of name to value, not str"),
    ({"filters": [("status", "active")]}, "filters must be a dict of name to value, not list"),
    ({"order": ["name"]}, "unknown order"),
    ({"order": 5}, "unknown order"),
    ({"limit": -1}, "limit must be an integer"),
    ({"limit": "5"}, "limit must be an integer"),
    ({"limit": 2**80}, "limit must be an integer"),
    ({"cursor": "abc.def"}, "invalid cursor"),
    ({"cursor": 5}, "invalid cursor"),
])
def test_lists_refuse_malformed_arguments_with_a_validation_error(db, repository, kwargs,
                                                                  message):
    actor = make_user()
    with pytest.raises(ValidationError) as info:
        repository(actor).list(**kwargs)
    assert message in str(info.value)
