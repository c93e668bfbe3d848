"""reconciler.ui: the operators' pages, over ASGI (headers, login, escaping) and in headless Chromium.

The store is seeded by `fixtures.operators_page.seed`, which plants hostile text (`<script>`, an `onerror`
image) in a job log, a transcript and a file name the agent tried to write.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx2
import pytest

from fixtures.browser import Browser, find_chromium
from fixtures.operators_page import HOSTILE, TOKEN, config, seed, serve
from reconciler.api import build_api
from reconciler.context import ReconcilerContext
from reconciler.metrics import Metrics
from reconciler.store.engine import SessionFactory, make_engine, make_sessionmaker
from reconciler.store.migrate import upgrade_async
from reconciler.ui.auth import COOKIE, UiAuth
from reconciler.ui.render import CSP

anyio = pytest.mark.anyio


@asynccontextmanager
async def ui_client(
    sessions: SessionFactory, *, token: str | None = TOKEN, client_addr: tuple[str, int] = ("127.0.0.1", 50000)
) -> AsyncIterator[httpx2.AsyncClient]:
    ctx = ReconcilerContext(config=config(), sessions=sessions, forge=None, dispatcher=None, metrics=Metrics())
    app = build_api(ctx, api_token=token, allow_no_token=token is None)
    transport = httpx2.ASGITransport(app=app, client=client_addr)
    async with httpx2.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


async def _login(http: httpx2.AsyncClient) -> None:
    answer = await http.post("/ui/login", data={"token": TOKEN})
    assert answer.status_code == 303
    assert answer.headers["location"] == "/ui"


@anyio
async def test_pages_redirect_to_the_login_form_and_the_form_sets_a_strict_httponly_cookie(
    sessions: SessionFactory,
) -> None:
    await seed(sessions)
    async with ui_client(sessions) as http:
        for path in ("/ui", "/ui/attempts", "/ui/attempts/a1b2c3d4e5f6", "/ui/spend"):
            answer = await http.get(path)
            assert (answer.status_code, answer.headers["location"]) == (303, "/ui/login"), path
        form = await http.get("/ui/login")
        assert form.status_code == 200
        assert 'method="post"' in form.text and 'name="token"' in form.text
        answer = await http.post("/ui/login", data={"token": TOKEN})
        cookie = answer.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE}=")
        assert TOKEN not in cookie  # the cookie is a signed expiry, never the token
        for attribute in ("HttpOnly", "SameSite=strict", "Path=/ui", "Max-Age=43200"):
            assert attribute.lower() in cookie.lower(), attribute
        assert "secure" not in cookie.lower()  # plain HTTP on loopback: a Secure cookie would never come back
        page = await http.get("/ui")
        assert page.status_code == 200 and "payments-api" in page.text


@anyio
async def test_a_wrong_token_a_forged_or_expired_cookie_or_a_bearer_header_opens_nothing(
    sessions: SessionFactory,
) -> None:
    async with ui_client(sessions) as http:
        wrong = await http.post("/ui/login", data={"token": TOKEN + "x"})
        assert wrong.status_code == 401 and "Wrong token." in wrong.text
        assert "set-cookie" not in wrong.headers
        assert (await http.get("/ui", headers={"Authorization": f"Bearer {TOKEN}"})).status_code == 303
        assert (await http.get("/ui", headers={"Cookie": f"{COOKIE}={TOKEN}"})).status_code == 303
        forged = f"{COOKIE}=99999999999.{'0' * 64}"
        assert (await http.get("/ui", headers={"Cookie": forged})).status_code == 303
        # A cookie signed with the right token but expired.
        auth = UiAuth(token=TOKEN.encode())
        expired = f"{COOKIE}=1000.{auth._sign(1000)}"
        assert (await http.get("/ui", headers={"Cookie": expired})).status_code == 303
        fresh = f"{COOKIE}=99999999999.{auth._sign(99999999999)}"
        assert (await http.get("/ui", headers={"Cookie": fresh})).status_code == 200
        # The token is never accepted in a URL.
        assert (await http.get(f"/ui?token={TOKEN}")).status_code == 303
        assert (await http.get(f"/ui/login?token={TOKEN}")).status_code == 200
        assert "set-cookie" not in (await http.get(f"/ui/login?token={TOKEN}")).headers


@anyio
async def test_logout_clears_the_cookie(sessions: SessionFactory) -> None:
    async with ui_client(sessions) as http:
        await _login(http)
        assert (await http.get("/ui")).status_code == 200
        out = await http.post("/ui/logout")
        assert (out.status_code, out.headers["location"]) == (303, "/ui/login")
        assert re.search(rf"{COOKIE}=\"?\"?;", out.headers["set-cookie"])
        assert (await http.get("/ui")).status_code == 303


@anyio
async def test_every_answer_carries_a_strict_content_security_policy(sessions: SessionFactory) -> None:
    await seed(sessions)
    async with ui_client(sessions) as http:
        await _login(http)
        for path in ("/ui/login", "/ui", "/ui/attempts", "/ui/attempts/a1b2c3d4e5f6", "/ui/spend", "/ui/attempts/nope"):
            answer = await http.get(path)
            assert answer.headers["content-security-policy"] == CSP, path
            assert answer.headers["x-content-type-options"] == "nosniff"
            assert answer.headers["x-frame-options"] == "DENY"
        assert "script-src" not in CSP and "default-src 'none'" in CSP  # no script may run at all
        css = await http.get("/ui/static/style.css")
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")


@anyio
async def test_hostile_text_is_escaped_on_every_page(sessions: SessionFactory) -> None:
    ids = await seed(sessions)
    async with ui_client(sessions) as http:
        await _login(http)
        page = await http.get(f"/ui/attempts/{ids['succeeded']}")
        assert page.status_code == 200
        html = page.text
        assert "<script" not in html.lower()
        assert "<img src=x" not in html
        assert "&lt;script&gt;document.title=" in html  # shown, as text, in the transcript and the file name
        assert html.count("&lt;script&gt;") >= 2
        # The report is Markdown: headings and tables render, raw HTML in it stays text.
        assert "<h2>What failed</h2>" in html and "<table>" in html
        assert "&lt;b&gt;raw html stays text&lt;/b&gt;" in html
        for path in ("/ui", "/ui/attempts", "/ui/spend"):
            assert "<script" not in (await http.get(path)).text.lower()


@anyio
async def test_a_pr_link_is_made_only_from_an_http_url(sessions: SessionFactory) -> None:
    ids = await seed(sessions)
    from reconciler.store import attempts as attempt_store

    await attempt_store.heartbeat(sessions, ids["stale"], pr_url="javascript:alert(1)", pr_number=7)
    async with ui_client(sessions) as http:
        await _login(http)
        html = (await http.get(f"/ui/attempts/{ids['stale']}")).text
        assert "javascript:" not in html and "#7" in html
        good = (await http.get(f"/ui/attempts/{ids['succeeded']}")).text
        assert 'href="http://127.0.0.1:8001/acme/payments-api/pull/42"' in good


@anyio
async def test_attempts_filter_and_bad_filters(sessions: SessionFactory) -> None:
    ids = await seed(sessions)
    async with ui_client(sessions) as http:
        await _login(http)
        everything = (await http.get("/ui/attempts")).text
        assert all(i in everything for i in ids.values())
        escalated = (await http.get("/ui/attempts", params={"status": "escalated"})).text
        assert ids["escalated"] in escalated and ids["succeeded"] not in escalated
        one = (await http.get("/ui/attempts", params={"project": "payments-api"})).text
        assert ids["succeeded"] in one and ids["stale"] not in one
        assert (await http.get("/ui/attempts", params={"status": "bogus"})).status_code == 400
        unknown = await http.get("/ui/attempts", params={"project": "<b>x</b>"})
        assert unknown.status_code == 400 and "<b>x</b>" not in unknown.text
        assert (await http.get("/ui/attempts", params={"offset": "-1"})).status_code == 400
        missing = await http.get("/ui/attempts/zzz%00")
        assert missing.status_code == 404


@anyio
async def test_without_a_token_the_pages_serve_loopback_only(sessions: SessionFactory) -> None:
    async with ui_client(sessions, token=None) as http:
        assert (await http.get("/ui")).status_code == 200
        assert (await http.get("/ui/login")).status_code == 303
    async with ui_client(sessions, token=None, client_addr=("203.0.113.9", 40000)) as http:
        refused = await http.get("/ui")
        assert refused.status_code == 403 and "loopback" in refused.text


@anyio
async def test_the_api_still_demands_its_bearer_token_next_to_the_pages(sessions: SessionFactory) -> None:
    async with ui_client(sessions) as http:
        await _login(http)  # a UI session is not an API credential
        assert (await http.get("/attempts")).status_code == 401
        assert (await http.get("/attempts", headers={"Authorization": f"Bearer {TOKEN}"})).status_code == 200


# --- in a real browser ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seeded_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('ui') / 'greenloop.db'}"

    async def prepare() -> None:
        engine = make_engine(url)
        try:
            await upgrade_async(engine)
            await seed(make_sessionmaker(engine))
        finally:
            await engine.dispose()

    asyncio.run(prepare())
    return url


@pytest.fixture(scope="module")
def site(seeded_url: str) -> Iterator[str]:
    with serve(seeded_url) as base:
        yield base


@pytest.fixture
def browser() -> Iterator[Browser]:
    if find_chromium() is None:
        pytest.skip("Chromium is not installed (Debian package `chromium`; .ci/run installs it)")
    with Browser() as b:
        yield b


def _log_in(browser: Browser, site: str) -> None:
    browser.open(f"{site}/ui")
    assert browser.path() == "/ui/login"
    assert "API token" in browser.text()
    browser.type_into("#token", TOKEN)
    browser.click_and_wait("form.login button")
    assert browser.path() == "/ui"


def test_browser_login_with_a_wrong_token_stays_on_the_form(browser: Browser, site: str) -> None:
    browser.open(f"{site}/ui/login")
    browser.type_into("#token", "not-the-token")
    browser.click_and_wait("form.login button")
    assert "Wrong token." in browser.text()
    browser.open(f"{site}/ui/spend")
    assert browser.path() == "/ui/login"


def test_browser_projects_page_shows_state_last_run_active_attempt_and_marks(browser: Browser, site: str) -> None:
    _log_in(browser, site)
    assert browser.evaluate("document.cookie") == ""  # HttpOnly: no script can read the session
    rows = browser.evaluate("[...document.querySelectorAll('tbody tr')].map(r => r.innerText.replace(/\\s+/g, ' '))")
    by_name = {row.split(" ")[0]: row for row in rows}
    assert set(by_name) == {"payments-api", "nightly-etl", "docs-site", "billing-cron"}
    assert "green" in by_name["payments-api"] and "tests #9102: success" in by_name["payments-api"]
    assert "red" in by_name["nightly-etl"] and "escalated" in by_name["nightly-etl"]
    assert "57a1e0000042" in by_name["docs-site"] and "running" in by_name["docs-site"]
    assert "stale" in by_name["docs-site"]
    assert "stale" not in by_name["payments-api"] and "escalated" not in by_name["payments-api"]


def test_browser_attempts_page_filters(browser: Browser, site: str) -> None:
    _log_in(browser, site)
    browser.open(f"{site}/ui/attempts")
    text = browser.text()
    assert all(i in text for i in ("a1b2c3d4e5f6", "e5c4a7ed0001", "57a1e0000042", "ca9ce1000007"))
    browser.evaluate("document.querySelector('select[name=status]').value = 'escalated'")
    browser.click_and_wait("form.filters button")
    assert browser.path() == "/ui/attempts?project=&status=escalated"
    text = browser.text()
    assert "e5c4a7ed0001" in text and "a1b2c3d4e5f6" not in text


def test_browser_attempt_page_shows_timeline_tool_calls_report_cost_and_hostile_text_as_text(
    browser: Browser, site: str
) -> None:
    _log_in(browser, site)
    browser.click_and_wait("a[href='/ui/attempts']")
    browser.click_and_wait("a[href='/ui/attempts/a1b2c3d4e5f6']")
    text = browser.text()
    assert "Attempt a1b2c3d4e5f6" in text and "succeeded" in text
    assert "verifying → succeeded: checks passed; squash-merged" in text
    assert "48,210 in · 3,904 out · 31,000 cache · 6 turns" in text and "$0.2135" in text
    assert "What failed" in text and "src/dates.py" in text  # report rendered, files written listed
    assert browser.evaluate("document.querySelector('.report h2').innerText") == "What failed"
    assert "create_pull_request" in text and "path refused" in text
    assert browser.evaluate("document.querySelector('dl.facts a[href*=pull]').innerText") == "#42"
    # The planted markup shows as text and never ran: no script element, no image, title untouched.
    browser.evaluate("document.querySelectorAll('details').forEach(d => d.open = true)")
    assert HOSTILE in browser.text()
    assert browser.evaluate("document.querySelectorAll('script, img').length") == 0
    assert browser.evaluate("document.title") == "Attempt a1b2c3d4e5f6 · greenloop"


def test_browser_spend_page_and_logout(browser: Browser, site: str) -> None:
    _log_in(browser, site)
    browser.click_and_wait("a[href='/ui/spend']")
    text = browser.text()
    assert "$0.3414 over 4 attempts" in text
    first = browser.evaluate("document.querySelector('tbody tr td').innerText")
    assert first == "payments-api"  # most expensive first
    browser.click_and_wait("form.logout button")
    assert browser.path() == "/ui/login"
    browser.open(f"{site}/ui")
    assert browser.path() == "/ui/login"


def test_screenshot_helper_writes_png_files(tmp_path: Path) -> None:
    if find_chromium() is None:
        pytest.skip("Chromium is not installed (Debian package `chromium`; .ci/run installs it)")
    from fixtures.operators_page import screenshots

    saved = screenshots(tmp_path)
    assert [p.name for p in saved] == ["operations-ui-projects.png", "operations-ui-attempt.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in saved)


@anyio
async def test_the_ui_exemption_from_the_bearer_guard_opens_no_api_route(sessions: SessionFactory) -> None:
    ctx = ReconcilerContext(config=config(), sessions=sessions, forge=None, dispatcher=None, metrics=Metrics())
    app = build_api(ctx, api_token=TOKEN)
    for path in ("/ui/../attempts", "/ui/..%2Fattempts", "/ui/%2e%2e/kill-switch", "/ui//attempts"):
        sent: list[dict[str, object]] = []

        async def receive() -> dict[str, object]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, object], sink: list[dict[str, object]] = sent) -> None:
            sink.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"testserver")],
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
        }
        await app(scope, receive, send)
        status = next(m["status"] for m in sent if m["type"] == "http.response.start")
        body = b"".join(bytes(m.get("body", b"")) for m in sent if m["type"] == "http.response.body")
        assert status in (303, 404), (path, status)  # the login redirect or no such route, never the API's data
        assert b'"attempts"' not in body and b'"enabled"' not in body


@anyio
async def test_the_token_never_reaches_a_log(sessions: SessionFactory, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    async with ui_client(sessions) as http:
        await http.post("/ui/login", data={"token": TOKEN + "-wrong"})
        await _login(http)
        await http.get("/ui")
    events = [r.getMessage() for r in caplog.records]
    assert "ui_login_refused" in events and "ui_projects" in events
    assert not any(TOKEN in (r.getMessage() + str(getattr(r, "greenloop_fields", ""))) for r in caplog.records)


@anyio
async def test_a_malformed_login_form_is_a_400_page_not_a_crash(sessions: SessionFactory) -> None:
    async with ui_client(sessions) as http:
        crowded = await http.post("/ui/login", content=b"&".join(b"f%d=x" % i for i in range(10)))
        assert crowded.status_code == 400 and "Invalid login form." in crowded.text
        huge = await http.post("/ui/login", content=b"token=" + b"x" * 10_000)
        assert huge.status_code == 413
        assert crowded.headers["content-security-policy"] == CSP
