"""The JSON API over real HTTP: auth, idempotency, validation answers, size limits, OpenAPI."""

from __future__ import annotations

import base64
import json
import time

import httpx
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models.errors import StorageUnavailable
from models.tables import AttachmentRow, Message
from paidan.web import build_app
from router.queries import TicketQueries
from webfixtures import API_TOKEN, PNG_1X1, make_settings, serve
from webfixtures import *  # noqa: F403 — the fixtures


def count_messages(engine, *where) -> int:
    with Session(engine) as session:
        return session.scalar(select(func.count()).select_from(Message).where(*where))


def key(tag: str) -> str:
    return f"{tag}-{time.monotonic_ns()}"


def body(**fields) -> dict:
    return {"name": "李四", "email": f"li.si.{time.monotonic_ns()}@example.com", "subject": "退款",
            "text": "我的退款还没到账", **fields}


def test_unknown_or_missing_token_is_401(live_app):
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic dGVzdDp0ZXN0"},
                    {"Authorization": "Bearer"}, {"Authorization": "Bearer t\u00e9st".encode()}):
        answer = httpx.post(live_app.url + "/api/v1/messages", json=body(), headers=headers)
        assert answer.status_code == 401, headers
        assert answer.json()["error"] == "unauthorized"
        assert answer.headers["www-authenticate"].startswith("Bearer")
    assert httpx.get(live_app.url + "/api/v1/tickets/GD20260101001?email=a@b.cn").status_code == 401


def test_same_message_twice_is_one_message(live_app, api_client):
    payload = body()
    idem = key("twice")
    first = api_client.post("/api/v1/messages", json=payload, headers={"Idempotency-Key": idem})
    assert first.status_code == 201, first.text
    receipt = first.json()
    assert receipt["duplicate"] is False and receipt["new_ticket"] is True
    assert receipt["ticket_number"].startswith("GD") and receipt["first_response_within_seconds"] == 4 * 3600
    # A retry, re-serialised differently by the client: still the same message.
    again = api_client.post("/api/v1/messages", content=json.dumps(payload, indent=2, ensure_ascii=True),
                            headers={"Idempotency-Key": idem, "Content-Type": "application/json; charset=utf-8"})
    assert again.status_code == 200
    assert again.json() == {**receipt, "duplicate": True, "new_ticket": False}
    assert count_messages(live_app.engine, Message.ticket_id.isnot(None),
                          Message.external_id.like(f"%:{idem}:%")) == 1
    [raw] = Session(live_app.engine).scalars(select(Message.raw).where(Message.id == receipt["message_id"]))
    assert json.loads(raw) == payload  # the request body bytes, as received


def test_external_id_in_the_body_works_too_and_keys_are_per_token(live_app, api_client):
    payload = body(external_id=key("ext"))
    assert api_client.post("/api/v1/messages", json=payload).status_code == 201
    assert api_client.post("/api/v1/messages", json=payload).status_code == 200
    # Another client (another token) that happens to use the same id is not deduplicated against us.
    other = httpx.post(live_app.url + "/api/v1/messages", json=payload,
                       headers={"Authorization": "Bearer test-token-2"})
    assert other.status_code == 201


def test_reused_key_with_different_content_is_not_dropped(live_app, api_client):
    idem = key("reuse")
    a = api_client.post("/api/v1/messages", json=body(text="第一条"), headers={"Idempotency-Key": idem})
    b = api_client.post("/api/v1/messages", json=body(text="第二条"), headers={"Idempotency-Key": idem})
    assert a.status_code == b.status_code == 201
    assert a.json()["message_id"] != b.json()["message_id"]


def test_validation_answers_400_naming_each_field(api_client):
    def problem(payload=None, content=None, headers=None) -> dict:
        answer = api_client.post("/api/v1/messages", json=payload, content=content,
                                 headers={"Idempotency-Key": key("v"), **(headers or {})})
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"] == "invalid"
        return answer.json()["fields"]

    assert "body" in problem(content=b'{"text": "unterminated', headers={"Content-Type": "application/json"})
    assert "body" in problem(content=b"\xff\xfe\x00garbage", headers={"Content-Type": "application/json"})
    assert problem(payload=["a", "list"]) == {"body": "must be a JSON object"}
    assert set(problem(payload={"email": "a@b.cn"})) == {"text"}
    assert set(problem(payload=body(text=123))) == {"text"}
    assert set(problem(payload=body(mesage="typo"))) == {"mesage"}
    assert set(problem(payload=body(email="nope"))) == {"email"}
    assert set(problem(payload=body(email=None, phone=None))) == {"email", "phone"}
    assert set(problem(payload=body(phone="12345"))) == {"phone"}
    assert set(problem(payload=body(text="   \x00  "))) == {"text"}
    assert set(problem(payload=body(ticket_number="12"))) == {"ticket_number"}
    assert set(problem(payload=body(language="fr"))) == {"language"}
    assert set(problem(payload=body(attachments=[{"filename": "a.png"}]))) == {"attachments.0.data_base64"}
    assert set(problem(payload=body(attachments=[{"filename": "a.png", "data_base64": "!!notbase64"}]))) == {
        "attachments.0.data_base64"}
    exe = base64.b64encode(b"MZ\x90\x00" + b"\x00" * 64).decode()
    fields = problem(payload=body(attachments=[{"filename": "a.png", "data_base64": exe}]))
    assert "does not match" in fields["attachments.0"]
    assert set(problem(payload=body(text="x" * 50_001))) == {"text"}


def test_idempotency_key_is_required_and_must_agree(api_client):
    missing = api_client.post("/api/v1/messages", json=body())
    assert missing.status_code == 400 and "Idempotency-Key" in missing.json()["fields"]["external_id"]
    clash = api_client.post("/api/v1/messages", json=body(external_id="a"), headers={"Idempotency-Key": "b"})
    assert clash.status_code == 400 and set(clash.json()["fields"]) == {"external_id"}
    odd = api_client.post("/api/v1/messages", json=body(), headers={"Idempotency-Key": "空格 and spaces".encode()})
    assert odd.status_code == 400 and set(odd.json()["fields"]) == {"external_id"}


def test_wrong_content_type_is_415(api_client):
    answer = api_client.post("/api/v1/messages", data={"text": "form-encoded"}, headers={"Idempotency-Key": "x"})
    assert answer.status_code == 415 and answer.json()["error"] == "unsupported_media_type"


def test_attachments_are_stored(live_app, api_client):
    payload = body(attachments=[{"filename": "截图.png", "content_type": "application/x-lie",
                                 "data_base64": base64.b64encode(PNG_1X1).decode()}])
    answer = api_client.post("/api/v1/messages", json=payload, headers={"Idempotency-Key": key("att")})
    assert answer.status_code == 201, answer.text
    with Session(live_app.engine) as session:
        [row] = session.scalars(select(AttachmentRow).where(AttachmentRow.message_id == answer.json()["message_id"]))
        assert (row.filename, row.content_type, bytes(row.data)) == ("截图.png", "image/png", PNG_1X1)


def test_too_large_body_is_413_with_json(live_app, api_client):
    big = body(text="x" * (1024 * 1024 + 10))
    answer = api_client.post("/api/v1/messages", json=big, headers={"Idempotency-Key": key("big")})
    assert answer.status_code == 413 and answer.json()["error"] == "too_large"

    def chunks():
        data = json.dumps(big).encode()
        for i in range(0, len(data), 32768):
            yield data[i:i + 32768]

    chunked = api_client.post("/api/v1/messages", content=chunks(),
                              headers={"Idempotency-Key": key("big"), "Content-Type": "application/json"})
    assert chunked.status_code == 413 and chunked.json()["error"] == "too_large"
    # Unauthenticated and oversized: still a clear 413 (the size is checked before anything else).
    assert httpx.post(live_app.url + "/api/v1/messages", json=big).status_code == 413


def test_storage_failure_is_503_with_retry_after(engine):
    async def broken(message):
        raise StorageUnavailable("down")

    queries = TicketQueries(engine)
    with serve(build_app(make_settings(), broken, queries.ticket_view)) as url:
        answer = httpx.post(url + "/api/v1/messages", json=body(), headers={
            "Authorization": f"Bearer {API_TOKEN}", "Idempotency-Key": "k"})
    assert answer.status_code == 503 and answer.headers["retry-after"] == "30"
    assert answer.json()["error"] == "unavailable"


def test_each_token_has_its_own_rate_limit_answering_429_and_storing_nothing(engine, web_intake):
    queries = TicketQueries(engine)
    with serve(build_app(make_settings(api_rate_limit_per_minute=3), web_intake.accept, queries.ticket_view)) as url:
        def post(token: str, tag: str) -> httpx.Response:
            return httpx.post(url + "/api/v1/messages", json=body(), headers={
                "Authorization": f"Bearer {token}", "Idempotency-Key": key(tag)})

        answers = [post(API_TOKEN, f"rl{i}") for i in range(4)]
        assert [a.status_code for a in answers] == [201, 201, 201, 429]
        refused = answers[-1]
        assert refused.json()["error"] == "rate_limited" and "nothing was stored" in refused.json()["detail"]
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert count_messages(engine, Message.external_id.like("%rl0-%")) == 1
        assert count_messages(engine, Message.external_id.like("%rl3-%")) == 0
        assert post("test-token-2", "other").status_code == 201  # another integration is not held up
        # Ticket look-ups with the same token draw on the same budget.
        number = answers[0].json()["ticket_number"]
        lookup = httpx.get(f"{url}/api/v1/tickets/{number}?email=a@b.cn", headers={"Authorization": f"Bearer {API_TOKEN}"})
        assert lookup.status_code == 429


def test_ticket_endpoint_shows_a_ticket_only_to_its_customer(api_client):
    payload = body(phone="13800138000", text="<b>bold</b> 文本")
    receipt = api_client.post("/api/v1/messages", json=payload, headers={"Idempotency-Key": key("t")}).json()
    number = receipt["ticket_number"]
    by_email = api_client.get(f"/api/v1/tickets/{number}", params={"email": payload["email"]})
    assert by_email.status_code == 200
    ticket = by_email.json()
    assert ticket["number"] == number and ticket["state"] == "new"
    assert [m["text"] for m in ticket["messages"]] == ["<b>bold</b> 文本"]  # JSON carries text as text
    assert api_client.get(f"/api/v1/tickets/{number}", params={"phone": "+8613800138000"}).status_code == 200
    miss = api_client.get(f"/api/v1/tickets/{number}", params={"email": "x@example.com"})
    nowhere = api_client.get("/api/v1/tickets/GD20000101999", params={"email": payload["email"]})
    assert miss.status_code == nowhere.status_code == 404 and miss.json() == nowhere.json()
    bad = api_client.get("/api/v1/tickets/nonsense")
    assert bad.status_code == 400 and set(bad.json()["fields"]) == {"number", "phone"}


def test_openapi_and_offline_docs(live_app):
    spec = httpx.get(live_app.url + "/openapi.json").json()
    operation = spec["paths"]["/api/v1/messages"]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert {"text", "email", "phone", "external_id", "attachments"} <= set(schema["properties"])
    assert schema["required"] == ["text"]
    assert {"201", "200", "400", "401", "413", "503"} <= set(operation["responses"])
    assert operation["security"] and "HTTPBearer" in spec["components"]["securitySchemes"]
    assert "/api/v1/tickets/{number}" in spec["paths"]
    assert not any(p in spec["paths"] for p in ("/contact", "/status"))  # the pages are not API

    docs = httpx.get(live_app.url + "/docs")
    assert docs.status_code == 200 and "POST /api/v1/messages" in docs.text
    # Served entirely from here: no CDN scripts or styles.
    assert "cdn" not in docs.text.lower() and "<script" not in docs.text
    assert 'href="/static/style.css"' in docs.text
    assert httpx.get(live_app.url + "/static/style.css").status_code == 200


def test_unknown_api_paths_and_methods_answer_json(live_app, api_client):
    nope = api_client.get("/api/v1/nothing")
    assert nope.status_code == 404 and nope.json()["error"] == "not_found"
    wrong = api_client.get("/api/v1/messages")
    assert wrong.status_code == 405 and wrong.json()["error"] == "http_error"
