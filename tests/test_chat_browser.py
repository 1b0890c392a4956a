"""The sandbox chat page in a real browser (Debian's Chromium, driven by Selenium), against
`wapipe run` with the example pizza bot: everything clicked goes through the real pipeline.

Where Chromium or its driver is missing these tests are skipped with one line (and fail under
CI=true, where `.ci/run` installs them). With ``WAPIPE_SCREENSHOT=PATH`` the menu walk saves the
page as a PNG there (``make screenshot`` makes the README's picture this way).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from daemon.sandbox_link import RECORD_KEY, EmulatorRecord
from daemon.simulate import SANDBOX_PHONE_NUMBER_ID
from tests.support.procs import free_port, sandbox_deployment
from tests.test_sandbox_chat import PNG

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT_SECONDS = 20.0


def _browser_or_skip() -> None:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not Path(path).exists()]
    if missing:
        message = f"{', '.join(missing)} missing: apt-get install chromium chromium-driver runs the chat page's browser tests"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


Browser = Callable[[str], Any]


@pytest.fixture(scope="module")
def browsers() -> Iterator[Browser]:
    """Opens a headless Chromium on a URL; every one opened is closed at the end."""
    _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opened: list[Any] = []
    profiles: list[str] = []

    def open_page(url: str) -> Any:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        profile = tempfile.mkdtemp(prefix="wapipe-chromium-")
        profiles.append(profile)
        for argument in (
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--window-size=1100,760", f"--user-data-dir={profile}",
        ):  # fmt: skip
            options.add_argument(argument)
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        opened.append(driver)
        driver.get(url)
        return driver

    try:
        yield open_page
    finally:
        for driver in opened:
            driver.quit()
        for profile in profiles:
            shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def deployment() -> Iterator[dict[str, str]]:
    """`wapipe run` in sandbox mode with the pizza bot; its environment."""
    with sandbox_deployment(EXAMPLES, "pizza:bot") as env:
        yield env


@pytest.fixture(scope="module")
def shop(deployment: dict[str, str]) -> str:
    """The pizza bot's web, as a base URL."""
    return f"http://127.0.0.1:{deployment['PORT']}"


def bot_sends(env: dict[str, str], user: str, messages: list[dict[str, Any]]) -> list[str]:
    """What a worker does: sends to the deployment's emulated Graph API (found, with its token,
    where the worker finds it: in Redis); the new messages' ids."""
    client = redis.Redis(unix_socket_path=str(Path(env["WAPIPE_DATA_DIR"]) / "redis.sock"))
    try:
        record = EmulatorRecord.decode(client.get(RECORD_KEY) or b"")
    finally:
        client.close()
    assert record is not None
    sent = []
    for message in messages:
        body = {"messaging_product": "whatsapp", "recipient_type": "individual", "to": f"+{user}", **message}
        request = urllib.request.Request(
            f"{record.graph_url}/v25.0/{SANDBOX_PHONE_NUMBER_ID}/messages", data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {record.token}"}, method="POST",
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=10) as answer:
            answered = json.load(answer)
        sent.append(answered["messages"][0]["id"] if "messages" in answered else str(answered))
    return sent


def new_user(base: str, name: str) -> str:
    """A new simulated user, made as the page's "+ Add" makes one; their number."""

    def listed() -> set[str]:
        with urllib.request.urlopen(f"{base}/sandbox/chat/api/users", timeout=10) as answer:
            return {user["number"] for user in json.load(answer)}

    before = listed()
    request = urllib.request.Request(
        f"{base}/sandbox/chat/api/users", data=json.dumps({"name": name}).encode(),
        headers={"Content-Type": "application/json"}, method="POST",
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as answer:
        [number] = {user["number"] for user in json.load(answer)} - before
    return number


def wait(driver: Any, condition: Callable[[Any], Any], what: str) -> Any:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # A part the page redrew meanwhile is looked at again at the next poll.
    ignored = (NoSuchElementException, StaleElementReferenceException)
    return WebDriverWait(driver, WAIT_SECONDS, poll_frequency=0.05, ignored_exceptions=ignored).until(
        condition, message=f"waiting for {what}"
    )


def bot_said(driver: Any, text: str) -> Any:
    """The bot's bubble holding ``text`` once it is on the page."""
    from selenium.webdriver.common.by import By

    return wait(driver, lambda d: next((m for m in d.find_elements(By.CSS_SELECTOR, ".msg.out") if text in m.text), None),
                f"the bot to say {text!r}")  # fmt: skip


def texts(driver: Any, direction: str) -> list[str]:
    from selenium.webdriver.common.by import By

    return [m.find_element(By.CSS_SELECTOR, ".text").text for m in driver.find_elements(By.CSS_SELECTOR, f".msg.{direction}")
            if m.find_elements(By.CSS_SELECTOR, ".text")]  # fmt: skip


def type_text(driver: Any, text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = wait(driver, lambda d: (e := d.find_element(By.ID, "text")).is_enabled() and e, "the composer")
    box.send_keys(text, Keys.ENTER)


def click(driver: Any, selector: str) -> None:
    from selenium.webdriver.common.by import By

    def clickable(d: Any) -> Any:
        found = [e for e in d.find_elements(By.CSS_SELECTOR, selector) if e.is_displayed() and e.is_enabled()]
        return found[-1] if found else None

    wait(driver, clickable, selector).click()


def test_a_text_gets_the_bots_answer_and_blue_ticks(browsers: Browser, shop: str) -> None:
    """Typing a text shows it with ticks, the bot's answer arrives pushed, and the bot's read receipt
    turns the ticks blue; WhatsApp's formatting is drawn (bold, italic)."""
    from selenium.webdriver.common.by import By

    user = new_user(shop, "Ana")
    page = browsers(f"{shop}/sandbox/chat?user={user}")
    type_text(page, "hello *there* _friend_")
    bot_said(page, "Say 'menu' to see what we bake.")
    mine = page.find_element(By.CSS_SELECTOR, ".msg.in")
    assert mine.find_element(By.TAG_NAME, "strong").text == "there"
    assert mine.find_element(By.TAG_NAME, "em").text == "friend"
    wait(
        page,
        lambda d: mine.find_element(By.CSS_SELECTOR, ".ticks").get_attribute("data-status") == "read",
        "blue ticks",
    )


def test_the_menu_is_walked_by_clicking_its_buttons_and_a_list_row(browsers: Browser, shop: str) -> None:
    """menu → "Order a pizza" → the list's Diavola row → 2 → "Yes, bake it": each click is the
    interactive reply Meta would send, and the bot answers from the state the last one left."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    user = new_user(shop, "Bruno")
    page = browsers(f"{shop}/sandbox/chat?user={user}")
    type_text(page, "menu")
    bot_said(page, "Welcome to Pizza Lisboa!")
    click(page, ".reply-button[data-id=order]")
    bot_said(page, "Which pizza?")
    click(page, ".list-open")
    click(page, ".list-row[data-id=diavola]")
    bot_said(page, "Diavola. How many?")
    click(page, ".reply-button[data-id=qty_2]")
    bot_said(page, "Shall we bake it?")
    click(page, ".reply-button[data-id=confirm]")
    bot_said(page, "Order #1 confirmed: 2 × Diavola. Ready in 25 minutes!")
    assert texts(page, "in") == ["menu", "Order a pizza", "Diavola", "2", "Yes, bake it"]
    if shot := os.environ.get("WAPIPE_SCREENSHOT"):  # the README's picture: the whole order, at rest
        page.set_window_size(1100, 980)
        page.execute_script(
            "document.activeElement.blur(); document.querySelector('#messages').scrollTop = 1e6"
        )
        ActionChains(page).move_to_element_with_offset(page.find_element(By.ID, "sidebar"), 0, 0).perform()
        page.save_screenshot(shot)


def test_an_image_from_disk_is_previewed_and_answered(browsers: Browser, shop: str, tmp_path: Path) -> None:
    """An image picked from disk shows in the user's bubble (from the emulator) and the bot answers
    it, having fetched and stored it through the media stage; a file over the sandbox's limit is
    refused in one line and sends nothing."""
    from selenium.webdriver.common.by import By

    picture = tmp_path / "pizza.png"
    picture.write_bytes(PNG)
    page = browsers(f"{shop}/sandbox/chat?user={new_user(shop, 'Carla')}")
    wait(page, lambda d: d.find_element(By.ID, "text").is_enabled(), "the page")
    page.find_element(By.ID, "file").send_keys(str(picture))
    bot_said(page, f"Thanks for the image ({len(PNG)} bytes, safely stored)!")
    image = page.find_element(By.CSS_SELECTOR, ".msg.in img.media")
    wait(
        page,
        lambda d: d.execute_script("return arguments[0].naturalWidth", image) == 1,
        "the preview to load",
    )
    too_big = tmp_path / "huge.png"
    too_big.write_bytes(PNG + bytes(4_000_000))
    page.find_element(By.ID, "file").send_keys(str(too_big))
    banner = wait(page, lambda d: (e := d.find_element(By.ID, "error")).is_displayed() and e, "the refusal")
    assert "larger than this sandbox takes (WAPIPE_MAX_BODY_BYTES" in banner.text
    assert len(page.find_elements(By.CSS_SELECTOR, ".msg.in")) == 1


def test_two_users_side_by_side_see_only_their_own_chat(browsers: Browser, shop: str) -> None:
    """Two pages, two users, writing at once: each sees their own messages and answers only."""
    first = browsers(f"{shop}/sandbox/chat?user={new_user(shop, 'Dina')}")
    second = browsers(f"{shop}/sandbox/chat?user={new_user(shop, 'Eva')}")
    type_text(first, "menu")
    type_text(second, "where is my pizza")
    bot_said(first, "Welcome to Pizza Lisboa!")
    bot_said(second, "Say 'menu' to see what we bake.")
    assert texts(first, "in") == ["menu"]
    assert texts(second, "in") == ["where is my pizza"]
    assert all("Welcome" not in text for text in texts(second, "out"))
    assert all("Say 'menu'" not in text for text in texts(first, "out"))


def test_the_page_recovers_after_the_web_restarts(
    browsers: Browser, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`wapipe run` stopped and started again on the same port and data: the open page reconnects
    by itself, shows nothing twice, and the next message is answered."""
    from selenium.webdriver.common.by import By

    data_dir = Path(tempfile.mkdtemp(prefix="wapipe-sbx-"))  # short: a unix socket lives there
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    try:
        with sandbox_deployment(EXAMPLES, "pizza:bot", data_dir=data_dir, port=port):
            page = browsers(f"{base}/sandbox/chat?user={new_user(base, 'Filipa')}")
            type_text(page, "hi")
            bot_said(page, "Welcome to Pizza Lisboa!")
        wait(
            page,
            lambda d: d.find_element(By.ID, "connection").get_attribute("data-state") == "lost",
            "the lost stream",
        )
        with sandbox_deployment(EXAMPLES, "pizza:bot", data_dir=data_dir, port=port):
            wait(
                page,
                lambda d: d.find_element(By.ID, "connection").get_attribute("data-state") == "live",
                "the stream back",
            )
            type_text(page, "menu")
            wait(page, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".msg.out")) == 2, "the second answer")
            assert texts(page, "in") == ["hi", "menu"]
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def test_every_kind_the_bot_sends_is_drawn(browsers: Browser, deployment: dict[str, str], shop: str) -> None:
    """Formatted text, an image, a URL button, a location, a contact card, a template, a reaction
    to the user's message and the typing indicator are each drawn as WhatsApp draws them."""
    from selenium.webdriver.common.by import By

    user = new_user(shop, "Gil")
    page = browsers(f"{shop}/sandbox/chat?user={user}")
    type_text(page, "where is my pizza")
    bot_said(page, "Say 'menu'")
    [mine] = page.find_elements(By.CSS_SELECTOR, ".msg.in")
    bot_sends(deployment, user, [
        {"type": "text", "text": {"body": "*bold* _italic_ ~gone~ ```mono``` https://example.com/t"}},
        # Meta takes HTTP(S) links only (a data: URL is refused); this one stays on this machine.
        {"type": "image", "image": {"link": f"{shop}/sandbox/pizza.png", "caption": "Your pizza"}},
        {"type": "interactive", "interactive": {"type": "cta_url", "body": {"text": "Track it"}, "action": {
            "name": "cta_url", "parameters": {"display_text": "Track", "url": "https://example.com/t/77"}}}},
        {"type": "location", "location": {"latitude": 38.7139, "longitude": -9.1394, "name": "Pizza Lisboa"}},
        {"type": "contacts", "contacts": [{"name": {"formatted_name": "Pizza desk"}, "phones": [{"phone": "+351 210 000 000"}]}]},
        {"type": "template", "template": {"name": "order_ready", "language": {"code": "en_US"}, "components": [
            {"type": "body", "parameters": [{"type": "text", "text": "77"}]}]}},
        {"type": "reaction", "reaction": {"message_id": mine.get_attribute("data-id"), "emoji": "❤"}},
    ])  # fmt: skip
    formatted = bot_said(page, "italic")
    drawn = {
        tag: formatted.find_element(By.TAG_NAME, tag).text for tag in ("strong", "em", "del", "code", "a")
    }
    assert drawn == {
        "strong": "bold",
        "em": "italic",
        "del": "gone",
        "code": "mono",
        "a": "https://example.com/t",
    }
    assert bot_said(page, "Your pizza").find_element(By.CSS_SELECTOR, "img.media")
    link = bot_said(page, "Track it").find_element(By.CSS_SELECTOR, ".choices a")
    assert (link.text, link.get_attribute("href")) == ("↗ Track", "https://example.com/t/77")
    assert "38.7139, -9.1394" in bot_said(page, "Pizza Lisboa").text
    assert "+351 210 000 000" in bot_said(page, "Pizza desk").text
    assert "body: 77" in bot_said(page, "template order_ready (en_US)").text
    wait(
        page,
        lambda d: mine.find_elements(By.CSS_SELECTOR, ".reactions"),
        "the reaction on the user's message",
    )
    assert mine.find_element(By.CSS_SELECTOR, ".reactions").text == "❤"
    read = {"messaging_product": "whatsapp", "status": "read", "message_id": mine.get_attribute("data-id"),
            "typing_indicator": {"type": "text"}}  # fmt: skip
    bot_sends(deployment, user, [read])
    wait(page, lambda d: d.find_elements(By.CSS_SELECTOR, "#messages .typing"), "the typing indicator")
    assert page.find_element(By.ID, "presence").text == "typing…"


def test_the_user_reacts_to_the_bots_message(browsers: Browser, shop: str) -> None:
    """Hovering a bot's message offers reactions; the one picked shows under it and goes to the bot
    as Meta's reaction webhook (the pizza bot answers it with its fallback)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    page = browsers(f"{shop}/sandbox/chat?user={new_user(shop, 'Ines')}")
    type_text(page, "menu")
    welcome = bot_said(page, "Welcome to Pizza Lisboa!")
    ActionChains(page).move_to_element(welcome).perform()
    click(page, ".msg.out .react")
    click(page, ".emoji-picker button")
    wait(
        page,
        lambda d: welcome.find_elements(By.CSS_SELECTOR, ".reactions.mine"),
        "the reaction under the message",
    )
    bot_said(page, "Say 'menu' to see what we bake.")
    assert texts(page, "in") == ["menu"]
    assert [m.get_attribute("data-type") for m in page.find_elements(By.CSS_SELECTOR, ".msg.in")] == ["text"]


def test_the_readme_shows_the_page_as_the_browser_drew_it() -> None:
    """The README's picture is a PNG of this test's window (`make screenshot`), embedded where the
    README starts its one-minute tour."""
    readme = (EXAMPLES.parent / "README.md").read_text(encoding="utf-8")
    tour = readme.index("## One machine: try it in a minute")
    assert tour < readme.index("](docs/chat.png)") < readme.index("\n## ", tour + 1)
    head = (EXAMPLES.parent / "docs" / "chat.png").read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(head[16:20], "big") == 1100


def test_a_user_added_on_the_page_shares_a_location(browsers: Browser, shop: str) -> None:
    """ "+ Add" makes a new simulated user and opens their chat (in the URL too, for a second
    window); the location button asks for coordinates and sends them as a location the bot answers."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions

    page = browsers(f"{shop}/sandbox/chat")
    wait(page, lambda d: d.find_elements(By.CSS_SELECTOR, ".user"), "the users")
    page.find_element(By.ID, "new-user-name").send_keys("Helena")
    page.find_element(By.ID, "new-user").click()
    chosen = wait(page, lambda d: next((u for u in d.find_elements(By.CSS_SELECTOR, ".user.selected") if "Helena" in u.text), None),
                  "Helena chosen")  # fmt: skip
    assert page.current_url.endswith(f"?user={chosen.get_attribute('data-number')}")
    page.find_element(By.ID, "location").click()
    prompt = wait(page, expected_conditions.alert_is_present(), "the location prompt")
    prompt.send_keys("38.7139, -9.1394, Pizza Lisboa")
    prompt.accept()
    bot_said(page, "Say 'menu' to see what we bake.")
    assert "Pizza Lisboa" in page.find_element(By.CSS_SELECTOR, ".msg.in").text
