"""within_db.aio: the same models, services and repositories awaited through pwasyncio
(aiosqlite, asyncpg), on a database of each backend that commits for real."""

import asyncio
import datetime as dt

import pytest

import within_db
from within_db import aio
from within_db.db import database
from within_db.errors import ConfigurationError, ConflictError, ValidationError
from within_db.models.campaigns import Campaign
from within_db.models.users import User
from within_db.repositories import CampaignRepository
from within_db.repositories.campaigns import EDIT, VIEW_ALL
from within_db.services import campaigns as campaign_svc
from within_db.services import users as user_svc

from .helpers import make_ad, make_campaign, statements, user_with

pytestmark = pytest.mark.anyio

CAMPAIGN = dict(name="Async", objective="traffic", platform="google", start_date="2026-04-01")


@pytest.fixture
async def adb(aio_url, anyio_backend):
    db = aio.connect(aio_url)
    yield db
    await aio.close()
    database.initialize(None)


async def test_services_run_unchanged(adb):
    def scenario():
        user = user_svc.create_user(f"a{id(adb)}@example.com", "correct horse battery staple")
        raw, _ = user_svc.issue_token(user)
        return user, raw

    user, raw = await aio.run(scenario)
    assert (await aio.run(user_svc.verify_token, raw)).id == user.id
    assert await aio.run(user_svc.verify_token, raw + "x") is None
    assert await aio.run(user_svc.has_permission, user, VIEW_ALL) is False
    assert await aio.run(user_svc.authenticate, user.email, "correct horse battery staple")
    with pytest.raises(ConflictError):
        await aio.run(user_svc.create_user, user.email, "correct horse battery staple")


async def test_repositories_are_awaitable_with_their_query_counts(adb):
    def setup():
        owner = user_with(EDIT)
        for i in range(5):
            at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(hours=i)
            make_ad(make_campaign(owner=owner, created_at=at, updated_at=at))
        return owner

    owner = await aio.run(setup)
    repo = aio.awaitable(CampaignRepository(owner))
    seen, cursor = [], None
    while True:
        page = await repo.list(limit=2, cursor=cursor)
        seen.extend(c.id for c in page.items)
        if not page.next_cursor:
            break
        cursor = page.next_cursor
    assert len(seen) == len(set(seen)) == 5
    with statements() as q:
        views = await aio.awaitable(CampaignRepository(owner)).user_campaigns(owner.id)
    assert len(q) == 3 and [len(v.ads) for v in views] == [1] * 5
    created = await repo.create(CAMPAIGN)
    assert created.owner_id == owner.id
    with pytest.raises(ValidationError, match="campaigns_dates_check"):
        await repo.create({**CAMPAIGN, "end_date": "2026-01-01"})
    as_dicts = await aio.run(campaign_svc.get_user_campaigns, owner.id)
    assert [c["campaign"]["id"] for c in as_dicts][0] == str(created.id)


async def test_concurrent_tasks_get_their_own_connections(adb):
    owner = await aio.run(user_with, EDIT)
    repo = aio.awaitable(CampaignRepository(owner))
    made = await asyncio.gather(*[repo.create({**CAMPAIGN, "name": f"C{i}"})
                                  for i in range(8)])
    assert len({c.id for c in made}) == 8
    counts = await asyncio.gather(*[aio.run(lambda: Campaign.select().where(
        Campaign.owner == owner.id).count()) for _ in range(8)])
    assert counts == [8] * 8


async def test_a_failed_transaction_rolls_back(adb):
    owner = await aio.run(user_with, EDIT)

    def half_then_fail():
        with within_db.db.write_transaction():
            make_campaign(owner=owner)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await aio.run(half_then_fail)
    assert await aio.run(lambda: Campaign.select().where(Campaign.owner == owner.id).count()) \
        == 0
    async with adb.atomic() as txn:
        await aio.run(make_campaign, owner=owner)
        await txn.arollback()
    assert await aio.run(lambda: Campaign.select().where(Campaign.owner == owner.id).count()) \
        == 0


async def test_instants_and_json_round_trip_exactly(adb):
    at = dt.datetime(2026, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC)

    def write_and_read():
        owner = user_with()
        campaign = make_campaign(owner=owner, created_at=at, metadata={"k": [1, "two", None]})
        return Campaign.get_by_id(campaign.id), owner

    campaign, owner = await aio.run(write_and_read)
    assert campaign.created_at == at and campaign.created_at.utcoffset() == dt.timedelta(0)
    assert campaign.metadata == {"k": [1, "two", None]}
    after = await aio.run(lambda: Campaign.select().where(
        Campaign.owner == owner.id, Campaign.created_at >= at).count())
    assert after == 1


async def test_run_refuses_a_synchronous_database(aio_url, anyio_backend):
    within_db.connect(aio_url)
    try:
        with pytest.raises(ConfigurationError, match="aio.connect"):
            await aio.run(User.select().count)
    finally:
        database.obj.close()
        database.initialize(None)


def test_connect_options_translate_or_are_refused(databases):
    if databases.kind == "sqlite":
        twin = aio.make_database("sqlite:///:memory:")
        assert isinstance(twin, aio.AsyncSqliteDatabase)
        return
    twin = aio.make_database("postgresql+pool://u:secret@db.example:5433/x?max_connections=3")
    assert isinstance(twin, aio.AsyncPostgresDatabase)
    assert twin._pool_size == 3
    assert twin.connect_params["server_settings"]["TimeZone"] == "UTC"
    assert "secret" not in repr(twin)
    with pytest.raises(ConfigurationError, match="keepalives"):
        aio.make_database("postgresql://u@h/x?keepalives=1")
