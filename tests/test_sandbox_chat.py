"""The sandbox chat page's server side, in-process against a real Redis: what the page sends is a
signed webhook on the real path, what the bot sends reaches the user's stream, the simulated phone
reports statuses as Meta does, and a real client library (pywa) is answered like Meta answers it."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
import redis
from aiohttp.test_utils import TestClient, TestServer
from dramatiq import Message

from daemon.config import Settings
from daemon.pipeline import PIPELINE_QUEUE
from daemon.sandbox_chat import FIRST_USER
from daemon.signature import verify
from daemon.simulate import SANDBOX_PHONE_NUMBER_ID
from daemon.store import keys
from daemon.store.erasure import forget
from daemon.web import EMULATOR, make_app
from tests.support.procs import base_env
from tests.support.waiting import async_wait_for

QUEUE_KEY = f"dramatiq:{PIPELINE_QUEUE}"
USER = str(FIRST_USER)
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


class Sandbox:
    """The web in sandbox mode on a real port, the emulator's bearer token, and the session Redis."""

    def __init__(self, client: TestClient[Any, Any], token: str, rclient: redis.Redis) -> None:
        self.client = client
        self.auth = {"Authorization": f"Bearer {token}"}
        self.redis = rclient

    @property
    def url(self) -> str:
        return str(self.client.make_url("")).rstrip("/")

    async def api(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        async with self.client.post(f"/sandbox/chat/api/{path}", json=body) as response:
            return response.status, await response.json()

    async def bot_sends(self, message: dict[str, Any], number: str = SANDBOX_PHONE_NUMBER_ID) -> str:
        """The worker's side: a send from ``number`` to the emulated Graph API; the new message's id."""
        body = {"messaging_product": "whatsapp", "recipient_type": "individual", **message}
        async with self.client.post(f"/sandbox/graph/v25.0/{number}/messages", json=body,
                                    headers=self.auth) as response:  # fmt: skip
            assert response.status == 200, await response.text()
            return str((await response.json())["messages"][0]["id"])

    def webhooks(self) -> list[dict[str, Any]]:
        """Every webhook the web took in, in order, each checked for Meta's signature."""
        found = []
        for message_id in self.redis.lrange(QUEUE_KEY, 0, -1):
            message = Message.decode(self.redis.hget(f"{QUEUE_KEY}.msgs", message_id))
            body = message.kwargs["body"].encode()
            verify(body, message.kwargs["signature"], "sandbox-app-secret")
            found.append(json.loads(body)["entry"][0]["changes"][0]["value"])
        return found

    def statuses(self) -> list[tuple[str, str]]:
        return [(s["id"], s["status"]) for value in self.webhooks() for s in value.get("statuses", [])]

    def events(self, user: str = USER) -> list[dict[str, Any]]:
        return [json.loads(fields[b"e"]) for _, fields in self.redis.xrange(keys.sandbox_chat(user))]


async def until(check: Callable[[], bool], what: str) -> None:
    """Poll ``check`` (reading Redis) until it holds, for at most 10 s."""

    async def probe() -> bool:
        return check()

    await async_wait_for(probe, timeout=10, what=what)


@pytest.fixture
async def sandbox(redis_url: str, rclient: redis.Redis) -> AsyncIterator[Sandbox]:
    settings = Settings.from_env(base_env(PORT="8080"))
    assert settings.sandbox
    app = make_app(settings, redis_url)
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    app[EMULATOR].web_url = str(client.make_url("")).rstrip("/")
    yield Sandbox(client, app[EMULATOR].token, rclient)
    await client.close()


async def test_what_the_user_types_is_a_signed_webhook_on_the_real_path(sandbox: Sandbox) -> None:
    """A text from the page: the web took in Meta's webhook for it (signed with the app secret,
    from the user, with their name), and the user's stream shows it, then its delivered tick."""
    status, users = await sandbox.api("users", {"name": "Ana"})
    assert status == 200
    assert users == [{"number": USER, "name": "Ana"}]
    status, sent = await sandbox.api("send", {"user": USER, "type": "text", "text": "menu *please*"})
    assert status == 200
    [value] = sandbox.webhooks()
    [message] = value["messages"]
    assert message["id"] == sent["id"]
    assert message["from"] == USER
    assert message["type"] == "text"
    assert message["text"] == {"body": "menu *please*"}
    assert value["contacts"] == [{"profile": {"name": "Ana"}, "wa_id": USER}]
    assert value["metadata"]["phone_number_id"] == SANDBOX_PHONE_NUMBER_ID
    events = sandbox.events()
    assert [(e["kind"], e.get("status")) for e in events] == [("in", None), ("status", "delivered")]
    assert events[0]["message"] == message


async def test_the_bots_messages_reach_the_users_page_and_their_phone_reports_them(sandbox: Sandbox) -> None:
    """A send to the user lands in their stream (not another user's); their phone posts `sent` and
    `delivered` statuses back as webhooks, and `read` once the page showed it."""
    out = await sandbox.bot_sends({"to": f"+{USER}", "type": "text", "text": {"body": "Hello"}})
    other = await sandbox.bot_sends(
        {"to": "15550009999", "type": "text", "text": {"body": "Not yours"}}, "200000000000002"
    )
    [event] = sandbox.events()
    assert (event["kind"], event["id"], event["message"]["text"]) == ("out", out, {"body": "Hello"})
    await until(lambda: len(sandbox.statuses()) == 4, "sent and delivered statuses")
    assert sorted(sandbox.statuses()) == sorted(
        [(out, "sent"), (out, "delivered"), (other, "sent"), (other, "delivered")]
    )
    assert [s for s in sandbox.statuses() if s[0] == out] == [(out, "sent"), (out, "delivered")]
    status, _ = await sandbox.api("read", {"user": USER, "ids": [out]})
    assert status == 200
    await until(lambda: (out, "read") in sandbox.statuses(), "the read status")
    [webhook] = [v for v in sandbox.webhooks() if v.get("statuses", [{}])[0].get("status") == "read"]
    assert webhook["statuses"][0]["recipient_id"] == USER
    numbers = {(v["statuses"][0]["id"], v["metadata"]["phone_number_id"]) for v in sandbox.webhooks()}
    assert numbers == {(out, SANDBOX_PHONE_NUMBER_ID), (other, "200000000000002")}  # where each came from


async def test_read_receipts_and_typing_reach_the_users_ticks(sandbox: Sandbox) -> None:
    """The bot marking the user's message read (with "typing…") turns its ticks blue and shows typing."""
    _, sent = await sandbox.api("send", {"user": USER, "type": "text", "text": "hi"})
    read = {
        "messaging_product": "whatsapp",
        "status": "read",
        "message_id": sent["id"],
        "typing_indicator": {"type": "text"},
    }
    async with sandbox.client.post(f"/sandbox/graph/v25.0/{SANDBOX_PHONE_NUMBER_ID}/messages", json=read,
                                   headers=sandbox.auth) as response:  # fmt: skip
        assert response.status == 200
    kinds = [(e["kind"], e.get("status")) for e in sandbox.events()]
    assert kinds == [("in", None), ("status", "delivered"), ("status", "read"), ("typing", None)]


async def test_a_button_press_or_list_pick_is_the_interactive_reply_meta_sends(sandbox: Sandbox) -> None:
    """Pressing a reply button or a list row of the bot's message is Meta's `interactive` webhook,
    quoting that message; a choice the message did not offer is refused, and nothing is posted."""
    buttons = {"type": "button", "body": {"text": "Pick"},
               "action": {"buttons": [{"type": "reply", "reply": {"id": "order", "title": "Order"}}]}}  # fmt: skip
    listed = {"type": "list", "body": {"text": "Which?"}, "action": {"button": "Pizzas", "sections": [
        {"rows": [{"id": "diavola", "title": "Diavola", "description": "€11.50"}]}]}}  # fmt: skip
    first = await sandbox.bot_sends({"to": USER, "type": "interactive", "interactive": buttons})
    second = await sandbox.bot_sends({"to": USER, "type": "interactive", "interactive": listed})
    assert (await sandbox.api("send", {"user": USER, "type": "button", "message_id": first, "id": "order"}))[
        0
    ] == 200
    assert (await sandbox.api("send", {"user": USER, "type": "list", "message_id": second, "id": "diavola"}))[
        0
    ] == 200
    status, refused = await sandbox.api(
        "send", {"user": USER, "type": "button", "message_id": second, "id": "order"}
    )
    assert status == 400
    assert "offers no such choice" in refused["error"]
    pressed, picked = [v["messages"][0] for v in sandbox.webhooks() if "messages" in v]
    assert pressed["interactive"] == {
        "type": "button_reply",
        "button_reply": {"id": "order", "title": "Order"},
    }
    assert pressed["context"] == {"from": SANDBOX_PHONE_NUMBER_ID, "id": first}
    assert picked["interactive"]["list_reply"] == {
        "id": "diavola",
        "title": "Diavola",
        "description": "€11.50",
    }


async def test_a_location_and_a_reaction_are_the_webhooks_meta_sends(sandbox: Sandbox) -> None:
    """A shared location and a reaction to the bot's message go as Meta's `location` and
    `reaction` messages; coordinates out of range and a reaction without its message are refused."""
    out = await sandbox.bot_sends({"to": USER, "type": "text", "text": {"body": "Hello"}})
    place = {"user": USER, "type": "location", "latitude": "38.7223", "longitude": -9.1393, "name": "Rossio"}
    assert (await sandbox.api("send", place))[0] == 200
    assert (await sandbox.api("send", {"user": USER, "type": "reaction", "message_id": out, "emoji": "👍"}))[
        0
    ] == 200
    assert (await sandbox.api("send", place | {"latitude": 91}))[0] == 400
    assert (await sandbox.api("send", {"user": USER, "type": "reaction", "emoji": "👍"}))[0] == 400
    assert (await sandbox.api("send", {"user": "not-a-number", "type": "text", "text": "hi"}))[0] == 400
    location, reaction = [v["messages"][0] for v in sandbox.webhooks() if "messages" in v]
    assert location["location"] == {"latitude": 38.7223, "longitude": -9.1393, "name": "Rossio"}
    assert reaction["reaction"] == {"message_id": out, "emoji": "👍"}


async def test_an_image_from_disk_is_stored_and_sent_as_metas_webhook_describes_it(sandbox: Sandbox) -> None:
    """An attached PNG is kept in the emulator and sent by media id with its base64 SHA-256, as
    Meta's webhook carries it; the page previews it from there. A PDF goes as a document."""
    form = aiohttp.FormData()
    form.add_field("user", USER)
    form.add_field("file", PNG, filename="cat.png", content_type="image/png")
    async with sandbox.client.post("/sandbox/chat/api/media", data=form) as response:
        assert response.status == 200, await response.text()
    form = aiohttp.FormData()
    form.add_field("user", USER)
    form.add_field("file", b"%PDF-1.4 menu", filename="menu.pdf", content_type="application/pdf")
    async with sandbox.client.post("/sandbox/chat/api/media", data=form) as response:
        assert response.status == 200
    image, document = [v["messages"][0] for v in sandbox.webhooks()]
    assert image["type"] == "image"
    assert image["image"]["mime_type"] == "image/png"
    assert image["image"]["sha256"] == base64.b64encode(hashlib.sha256(PNG).digest()).decode()
    assert document["document"]["filename"] == "menu.pdf"
    async with sandbox.client.get(f"/sandbox/chat/api/media/{image['image']['id']}") as response:
        assert response.status == 200
        assert response.content_type == "image/png"
        assert await response.read() == PNG


async def test_events_are_pushed_and_resume_after_the_last_event_id(sandbox: Sandbox) -> None:
    """The stream is server-sent events: what is there first, then what happens while the page
    listens; a page that reconnects with Last-Event-ID gets only what came after it."""
    await sandbox.bot_sends({"to": USER, "type": "text", "text": {"body": "one"}})

    received: list[tuple[str, dict[str, Any]]] = []  # what the first page has read so far

    async def read_events(
        count: int, headers: dict[str, str], found: list[tuple[str, dict[str, Any]]]
    ) -> list[tuple[str, dict[str, Any]]]:
        async with sandbox.client.get(
            "/sandbox/chat/api/events", params={"user": USER}, headers=headers
        ) as response:
            assert response.content_type == "text/event-stream"
            event_id = ""
            while len(found) < count:
                line = (await asyncio.wait_for(response.content.readline(), 10)).decode().rstrip("\n")
                if line.startswith("id: "):
                    event_id = line[4:]
                elif line.startswith("data: "):
                    found.append((event_id, json.loads(line[6:])))
        return found

    listening = asyncio.ensure_future(read_events(2, {}, received))
    await until(lambda: len(received) == 1, "the event already there")
    assert not listening.done()  # the page is connected, waiting for the next one
    await sandbox.bot_sends({"to": USER, "type": "text", "text": {"body": "two"}})
    (first_id, first), (_, second) = await listening
    assert [first["message"]["text"]["body"], second["message"]["text"]["body"]] == ["one", "two"]
    [(_, resumed)] = await read_events(1, {"Last-Event-ID": first_id}, [])
    assert resumed == second


@pytest.mark.parametrize(
    ("headers", "method"),
    [({"Host": "chat.attacker.example"}, "GET"), ({"Origin": "http://evil.example"}, "POST")],
    ids=["a foreign Host (DNS rebinding)", "another site's form"],
)
async def test_the_page_answers_its_own_page_on_this_machine_only(
    sandbox: Sandbox, headers: dict[str, str], method: str
) -> None:
    """A request naming another host, or posted from another site's page, is refused and posts nothing."""
    if method == "GET":
        async with sandbox.client.get("/sandbox/chat", headers=headers) as response:
            assert response.status == 403
    else:
        async with sandbox.client.post("/sandbox/chat/api/send", headers=headers,
                                       json={"user": USER, "type": "text", "text": "hi"}) as response:  # fmt: skip
            assert response.status == 403
    assert sandbox.webhooks() == []


async def test_the_page_is_plain_files_served_with_a_strict_policy(sandbox: Sandbox) -> None:
    """The page and its script and style come from the package, from this origin only."""
    async with sandbox.client.get("/sandbox/chat") as response:
        assert response.status == 200
        assert "default-src 'self'" in response.headers["Content-Security-Policy"]
        page = await response.text()
    for asset in ("chat.js", "chat.css"):
        assert f"/sandbox/chat/assets/{asset}" in page
        async with sandbox.client.get(f"/sandbox/chat/assets/{asset}") as response:
            assert response.status == 200
            assert len(await response.read()) > 1000
    async with sandbox.client.get("/sandbox/chat/assets/..%2Fsandbox_chat.py") as response:
        assert response.status == 404


async def test_outside_the_sandbox_there_is_no_chat_page(redis_url: str) -> None:
    """With a Meta setting given (production), /sandbox/chat does not exist."""
    settings = Settings.from_env(base_env(PORT="8080", WHATSAPP_ACCESS_TOKEN="t", WHATSAPP_APP_SECRET="s",
                                          WHATSAPP_VERIFY_TOKEN="v"))  # fmt: skip
    assert not settings.sandbox
    async with TestClient(TestServer(make_app(settings, redis_url))) as client:
        for path in ("/sandbox/chat", "/sandbox/chat/api/users"):
            async with client.get(path) as response:
                assert response.status == 404


def _pywa_calls(base_url: str, token: str) -> list[str]:
    """Thirteen calls of pywa 4.5's own client, pointed at the emulator (its base URL only)."""
    from pywa import WhatsApp
    from pywa.errors import WhatsAppError
    from pywa.types import Button, Contact, Section, SectionList, SectionRow, URLButton
    from pywa.types.templates import TemplateLanguage

    with httpx.Client() as session:
        wa = WhatsApp(phone_id=SANDBOX_PHONE_NUMBER_ID, token=token, session=session)
        meta = str(session.base_url)
        session.base_url = base_url + "/sandbox/graph" + meta[len("https://graph.facebook.com") :]
        media = wa.upload_media(PNG, mime_type="image/png", filename="cat.png")
        sent = [
            wa.send_message(USER, "Hello *there*").id,
            wa.send_message(USER, "Pick one", buttons=[Button("Yes", "yes"), Button("No", "no")]).id,
            wa.send_message(USER, "Which?", buttons=SectionList(
                "Pizzas", [Section("Ours", [SectionRow("Diavola", "diavola", "€11.50")])])).id,
            wa.send_message(USER, "Track it", buttons=URLButton("Track", "https://example.com/t/77")).id,
            wa.send_location(USER, 38.72, -9.14, name="Rossio").id,
            wa.send_reaction(USER, "👍", "wamid.in").id,
            str(wa.mark_message_as_read("wamid.in").success),
            str(wa.indicate_typing("wamid.in").success),
            str(media.id),
            wa.send_image(USER, media.id).id,
            wa.send_image(USER, "https://example.com/cat.png").id,
            wa.send_template(USER, name="order_ready", language=TemplateLanguage.ENGLISH_US).id,
            wa.send_contact(USER, Contact(name=Contact.Name(formatted_name="Desk", first_name="Desk"),
                                          phones=[Contact.Phone(phone="+351210000000")])).id,
        ]  # fmt: skip
        refused = []
        for call in (
            lambda: wa.send_message(USER, "Pick", buttons=[Button(f"B{n}", f"b{n}") for n in range(4)]),
            lambda: wa.send_message(USER, "Pick", buttons=[Button("t" * 30, "t")]),
            lambda: wa.send_message(USER, "x" * 5000),
        ):
            try:
                call()
            except WhatsAppError as error:  # pywa's class for the code Meta answered
                refused.append(f"{type(error).__name__} {error.code}")
        return [*sent, *refused]


async def test_a_real_client_library_is_answered_like_meta_answers_it(sandbox: Sandbox) -> None:
    """pywa 4.5's thirteen kinds of call (text, buttons, list, URL button, location, reaction, read,
    typing, upload, image by upload and by link, template, contact) are accepted, and its three
    over-limit messages are refused with the codes pywa maps to its own errors."""
    token = sandbox.auth["Authorization"].removeprefix("Bearer ")
    *accepted, refused_buttons, refused_title, refused_text = await asyncio.to_thread(
        _pywa_calls, sandbox.url, token
    )
    assert len(accepted) == 13
    assert accepted[6:8] == ["True", "True"]
    assert all(value.startswith("wamid.sandbox.") for n, value in enumerate(accepted) if n not in (6, 7, 8))
    assert (refused_buttons, refused_title) == ("InvalidParameter 131009", "InvalidParameter 131009")
    assert refused_text == "WhatsAppError 100"
    sent = [e["message"]["type"] for e in sandbox.events() if e["kind"] == "out"]
    assert sent == ["text", "interactive", "interactive", "interactive", "location", "reaction", "image", "image",
                    "template", "contacts"]  # fmt: skip


async def test_forget_erases_what_the_chat_page_kept_of_the_user(sandbox: Sandbox, tmp_path: Path) -> None:
    """`wapipe forget` removes the user's stream, the media they attached, who sent each message
    and their name; another user's chat stays."""
    await sandbox.api("users", {"name": "Ana"})
    await sandbox.api("send", {"user": USER, "type": "text", "text": "my secret order"})
    form = aiohttp.FormData()
    form.add_field("user", USER)
    form.add_field("file", PNG, filename="cat.png", content_type="image/png")
    async with sandbox.client.post("/sandbox/chat/api/media", data=form) as response:
        assert response.status == 200
    await sandbox.bot_sends({"to": "15550009999", "type": "text", "text": {"body": "someone else"}})
    image = sandbox.events()[-2]["message"]["image"]["id"]
    assert sandbox.redis.exists(keys.sandbox_media(image))
    await asyncio.to_thread(forget, sandbox.redis, SANDBOX_PHONE_NUMBER_ID, USER, tmp_path)
    assert sandbox.events() == []
    assert not sandbox.redis.exists(keys.sandbox_media(image))
    assert not sandbox.redis.keys("wapipe:sandbox:chat:from:*")
    assert not sandbox.redis.hexists(keys.SANDBOX_CHAT_USERS, USER)
    assert len(sandbox.events("15550009999")) == 1


async def test_open_chat_pages_never_cost_a_webhook_its_answer(sandbox: Sandbox) -> None:
    """1,500 open chat event streams exhausted the web's Redis connections (11 of 20 webhooks got
    503, the emulator answered sends with 500). The streams have connections of their own, at most
    MAX_EVENT_STREAMS: the pages past it are told to come back (503), and meanwhile every signed
    webhook gets 200 and every send of the bot is taken."""
    from daemon.sandbox_chat import MAX_EVENT_STREAMS
    from daemon.signature import sign
    from tests.support.meta import meta_bytes, text_envelope

    pages = 1_500
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as browser:
        opened: list[aiohttp.ClientResponse] = []

        async def open_page(n: int) -> int:
            response = await browser.get(f"{sandbox.url}/sandbox/chat/api/events", params={"user": USER})
            if response.status != 200:
                response.release()
                return response.status
            opened.append(response)
            return 200

        answers = await asyncio.gather(*(open_page(n) for n in range(pages)))
        try:
            assert answers.count(200) == MAX_EVENT_STREAMS
            assert answers.count(503) == pages - MAX_EVENT_STREAMS
            statuses = []
            for n in range(20):
                body = meta_bytes(text_envelope(f"wamid.PAGES{n}", phone_number_id=SANDBOX_PHONE_NUMBER_ID))
                headers = {
                    "X-Hub-Signature-256": sign(body, "sandbox-app-secret"),
                    "Content-Type": "application/json",
                }
                async with browser.post(f"{sandbox.url}/webhook", data=body, headers=headers) as posted:
                    statuses.append(posted.status)
            assert statuses == [200] * 20
            await sandbox.bot_sends({"to": USER, "type": "text", "text": {"body": "still here"}})
        finally:
            for response in opened:
                response.close()


@pytest.mark.parametrize("path", ["/sandbox/outbox", "/sandbox/identity?challenge=0123456789"])
async def test_every_sandbox_route_refuses_a_foreign_host(sandbox: Sandbox, path: str) -> None:
    """``/sandbox/outbox`` answered a request whose ``Host`` is ``evil.com`` (a page of another
    site whose name was rebound to 127.0.0.1): every sandbox route now refuses it, as the chat
    page does, unless the request carries the emulator's token; a loopback name is answered."""
    async with sandbox.client.get(path, headers={"Host": "evil.com"}) as response:
        assert response.status == 403
    async with sandbox.client.get(path, headers={"Host": "evil.com", **sandbox.auth}) as response:
        assert response.status == 200
    async with sandbox.client.get(path, headers={"Host": "localhost"}) as response:
        assert response.status == 200
