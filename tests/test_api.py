"""The example FastAPI service (examples/api) through a real HTTP client (httpx against the
ASGI app), on a committed database of each backend."""

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import within_db
from within_db import aio
from within_db.db import database
from within_db.models.campaigns import Campaign
from within_db.repositories.campaigns import EDIT, VIEW_ALL
from within_db.repositories.ml import VIEW_PREDICTIONS
from within_db.services import users as user_svc
from within_db.services.ml_system import log_predictions

from .helpers import make_ad, make_campaign, make_version, statements, user_with

pytestmark = pytest.mark.anyio

LOGS = 10_000
CAMPAIGN = {"name": "Spring sale", "objective": "sales", "platform": "meta",
            "start_date": "2026-03-01", "total_budget_micros": "1500.25"}
# verify_token on every request: the token lookup, last_used_at, and the audit append
# (PostgreSQL also takes the audit chain's advisory lock)
AUTH = {"sqlite": 4, "postgres": 5}
HEX64 = re.compile(r"\b[0-9a-f]{64}\b")


@pytest.fixture(scope="session")
def logged_version(aio_url):
    """A model version with 10,000 prediction logs, written by the (sync) batch API."""
    db = within_db.connect(aio_url)
    version = make_version()
    log_predictions(version, ({"request_id": f"page-{i}", "score": (i % 1000) / 1000}
                              for i in range(LOGS)))
    db.close()
    database.initialize(None)
    return version.id


@pytest.fixture
async def client(aio_url, anyio_backend):
    from examples.api.app import create_app

    app = create_app(aio_url)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("10.0.0.1", 4321))
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
            yield http


async def actor(*permissions):
    """A user holding ``permissions`` and a live bearer token: (user, headers)."""
    user = await aio.run(user_with, *permissions)
    raw, _ = await aio.run(user_svc.issue_token, user)
    return user, {"Authorization": f"Bearer {raw}"}


def clean(response, status):
    """Assert the status, and that the body carries no hash or secret of any kind."""
    assert response.status_code == status, response.text
    text = response.text
    assert "$argon2" not in text and "password" not in text and "token_hash" not in text
    assert not HEX64.search(text), "a 64-hex digest (a token or hash) leaked"
    return response.json() if text else None


def error_code(response, status):
    body = clean(response, status)
    assert set(body) == {"error"} and set(body["error"]) <= {"code", "message", "details"}
    return body["error"]["code"]


async def test_requests_without_a_live_token_are_401(client):
    user, headers = await actor()
    for sent in ({}, {"Authorization": "Bearer"}, {"Authorization": "Basic abc"},
                 {"Authorization": "Bearer wdbs_not-a-real-token"}):
        response = await client.get("/me", headers=sent)
        assert error_code(response, 401) == "unauthenticated"
        assert response.headers["www-authenticate"] == "Bearer"
    assert clean(await client.get("/me", headers=headers), 200)["id"] == str(user.id)
    await aio.run(user_svc.revoke_all, user)
    assert error_code(await client.get("/me", headers=headers), 401) == "unauthenticated"


async def test_campaign_crud_with_ads(client):
    owner, headers = await actor(EDIT)
    created = clean(await client.post("/campaigns", json=CAMPAIGN, headers=headers), 201)
    assert created["owner_id"] == str(owner.id)
    assert created["total_budget_micros"] == "1500.25"
    stored = await aio.run(lambda: Campaign.get_by_id(created["id"]).to_dict())
    assert created == stored
    cid = created["id"]
    ad = clean(await client.post(f"/campaigns/{cid}/ads", json={"name": "Banner"},
                                 headers=headers), 201)
    patched = clean(await client.patch(f"/campaigns/{cid}", json={"status": "active"},
                                       headers=headers), 200)
    assert patched["status"] == "active" and patched["name"] == CAMPAIGN["name"]
    clean(await client.patch(f"/ads/{ad['id']}", json={"headline": "20% off"},
                             headers=headers), 200)
    got = clean(await client.get(f"/campaigns/{cid}", headers=headers), 200)
    assert got["campaign"]["status"] == "active" and got["ads"][0]["headline"] == "20% off"
    listed = clean(await client.get("/campaigns", headers=headers), 200)
    assert [c["id"] for c in listed["items"]] == [cid] and listed["next_cursor"] is None
    assert clean(await client.delete(f"/ads/{ad['id']}", headers=headers), 204) is None
    assert clean(await client.delete(f"/campaigns/{cid}", headers=headers), 204) is None
    assert error_code(await client.get(f"/campaigns/{cid}", headers=headers), 404) == \
        "not_found"


async def test_permissions_are_403_and_invisible_rows_404(client):
    owner, owner_headers = await actor(EDIT)
    _, stranger = await actor(EDIT)
    _, viewer = await actor(VIEW_ALL)
    cid = clean(await client.post("/campaigns", json=CAMPAIGN, headers=owner_headers),
                201)["id"]
    assert error_code(await client.post("/campaigns", json=CAMPAIGN, headers=viewer),
                      403) == "forbidden"
    assert error_code(await client.get("/campaigns", params={"owner_id": str(owner.id)},
                                       headers=stranger), 403) == "forbidden"
    assert error_code(await client.patch(f"/campaigns/{cid}", json={"name": "x"},
                                         headers=viewer), 403) == "forbidden"
    for path in (f"/campaigns/{cid}", f"/users/{owner.id}/campaigns", "/campaigns/nope",
                 "/campaigns/00000000-0000-0000-0000-000000000000"):
        assert error_code(await client.get(path, headers=stranger), 404) == "not_found"
    assert error_code(await client.delete(f"/campaigns/{cid}", headers=stranger), 404) == \
        "not_found"
    assert clean(await client.get(f"/campaigns/{cid}", headers=viewer), 200)
    assert error_code(await client.get("/prediction-logs", headers=viewer), 403) == \
        "forbidden"


@pytest.mark.parametrize("body", [
    {**CAMPAIGN, "platform": "myspace"},
    {**CAMPAIGN, "total_budget_micros": 0.1},
    {**CAMPAIGN, "total_budget_micros": "1.0000001"},
    {**CAMPAIGN, "owner_id": "00000000-0000-0000-0000-000000000000"},
    {**CAMPAIGN, "name": "x" * 201},
    {**CAMPAIGN, "end_date": "2026-01-01"},  # before start_date: the CHECK refuses it
    {"name": "incomplete"},
    [],
])
async def test_invalid_bodies_are_422_without_echoing_input(client, body):
    _, headers = await actor(EDIT)
    response = await client.post("/campaigns", json=body, headers=headers)
    assert error_code(response, 422) == "invalid"
    assert "myspace" not in response.text and "x" * 50 not in response.text


async def test_invalid_query_parameters_are_422(client):
    _, headers = await actor(EDIT)
    for params in ({"limit": 0}, {"limit": 501}, {"cursor": "forged.cursor"},
                   {"status": "bogus"}, {"order": "name"}, {"owner_id": "x"}):
        response = await client.get("/campaigns", params=params, headers=headers)
        assert error_code(response, 422) == "invalid", params


async def test_the_user_campaigns_endpoint_and_its_query_count(client, backend):
    def setup():
        owner = user_with()
        for _ in range(4):
            campaign = make_campaign(owner=owner)
            make_ad(campaign)
            make_ad(campaign)
        return owner

    owner = await aio.run(setup)
    raw, _ = await aio.run(user_svc.issue_token, owner)
    headers = {"Authorization": f"Bearer {raw}"}
    with statements() as q:
        clean(await client.get("/me", headers=headers), 200)
    assert len(q) == AUTH[backend], q
    with statements() as q:
        body = clean(await client.get(f"/users/{owner.id}/campaigns", headers=headers), 200)
    assert len(q) == AUTH[backend] + 3, q  # + the design's view in three queries
    assert len(body) == 4 and all(len(item["ads"]) == 2 for item in body)
    created = [item["campaign"]["created_at"] for item in body]
    assert created == sorted(created, reverse=True)
    with statements() as q:
        clean(await client.get("/campaigns", headers=headers), 200)
    assert len(q) == AUTH[backend] + 2, q  # + permission + page


async def test_prediction_logs_page_over_10000_rows_without_gaps(client, logged_version,
                                                                  backend):
    _, headers = await actor(VIEW_PREDICTIONS)
    seen, cursor, pages = [], None, 0
    while True:
        params = {"model_version_id": logged_version, "limit": 500}
        if cursor:
            params["cursor"] = cursor
        with statements() as q:
            body = clean(await client.get("/prediction-logs", params=params,
                                          headers=headers), 200)
        assert len(q) == AUTH[backend] + 2, q
        seen.extend(item["id"] for item in body["items"])
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == LOGS // 500
    assert len(seen) == LOGS == len(set(seen)) and seen == sorted(seen, reverse=True)
    assert {f"page-{i}" for i in range(LOGS)} == set(await aio.run(
        lambda: [r for (r,) in _request_ids(logged_version)]))


def _request_ids(version_id):
    from within_db.models.ml_system import PredictionLog

    return PredictionLog.select(PredictionLog.request_id).where(
        PredictionLog.model_version == version_id).tuples()


async def test_tokens_never_appear_in_responses(client):
    user, headers = await actor(EDIT)
    token = headers["Authorization"].split()[1]
    for response in (await client.get("/me", headers=headers),
                     await client.post("/campaigns", json=CAMPAIGN, headers=headers),
                     await client.get("/campaigns", headers=headers)):
        assert token not in response.text
        assert hashlib.sha256(token.encode()).hexdigest() not in response.text
        clean(response, response.status_code)
    assert "password_hash" not in json.dumps(clean(await client.get("/me", headers=headers),
                                                   200))


def test_the_readme_command_serves_it_under_uvicorn(aio_url):
    """`DATABASE_URL=... uvicorn examples.api.app:app` as README says, over real HTTP."""
    within_db.connect(aio_url)
    user = user_with()
    raw, _ = user_svc.issue_token(user)
    database.obj.close()
    database.initialize(None)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    root = Path(__file__).resolve().parent.parent
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "examples.api.app:app", "--port", str(port)],
        cwd=root, env={**os.environ, "DATABASE_URL": aio_url},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/me")
                break
            except httpx.TransportError:
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                assert time.monotonic() < deadline, "uvicorn did not start"
                time.sleep(0.2)
        assert error_code(response, 401) == "unauthenticated"
        me = httpx.get(f"http://127.0.0.1:{port}/me", headers={"Authorization": f"Bearer {raw}"})
        assert clean(me, 200)["id"] == str(user.id)
    finally:
        server.terminate()
        server.wait(timeout=30)
