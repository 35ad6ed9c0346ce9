"""The playground page links only http(s) URLs from documents, and is served with a
Content-Security-Policy that runs its own inline script and style and nothing else (checked
in a real headless Chromium: the page works under it, and nothing is refused)."""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.support.fake_openai import FakeOpenAI, Script
from tests.support.servers import ServiceServer

EVIL = "javascript:alert(1)"
GOOD = "https://example.com/nn"


pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "make system-deps installs chromium and chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # CSP reports land here
    browser = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    yield browser
    browser.quit()


def console(browser: webdriver.Chrome) -> list[str]:
    """The page's console messages since the last call (Chromium reports CSP refusals here)."""
    entries: list[dict[str, Any]] = browser.get_log("browser")  # type: ignore[no-untyped-call]
    return [str(entry["message"]) for entry in entries]


def sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def test_page_headers(service: ServiceServer) -> None:
    resp = httpx.get(f"{service.url}/llm/playground")
    assert resp.status_code == 200
    policy = dict(
        part.strip().split(" ", 1) for part in resp.headers["content-security-policy"].split(";")
    )
    script = re.search(r"<script>(.*?)</script>", resp.text, re.S)
    style = re.search(r"<style>(.*?)</style>", resp.text, re.S)
    assert script and style
    assert policy["script-src"] == sha256(script.group(1))  # no 'unsafe-inline', no eval
    assert policy["style-src"] == sha256(style.group(1))
    assert policy["default-src"] == policy["connect-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'"
    assert resp.headers["x-frame-options"] == "DENY"
    assert resp.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    ("url", "href"),
    [
        (GOOD, GOOD),
        ("http://example.com", "http://example.com/"),
        (EVIL, None),
        ("JavaScript:alert(1)", None),
        (" javascript:alert(1)", None),
        ("data:text/html,<script>alert(1)</script>", None),
        ("vbscript:msgbox(1)", None),
        ("/llm/input_schema", None),  # relative: not a document's source
        ("example.com", None),
    ],
)
@pytest.mark.browser
def test_only_http_urls_become_links(
    service: ServiceServer, browser: webdriver.Chrome, url: str, href: str | None
) -> None:
    if not browser.current_url.endswith("/llm/playground"):
        browser.get(f"{service.url}/llm/playground")
    assert browser.execute_script("return httpUrl(arguments[0]);", url) == href


@pytest.mark.browser
def test_a_javascript_url_in_a_document_yields_no_link(
    service: ServiceServer, fake: FakeOpenAI, browser: webdriver.Chrome
) -> None:
    fake.push(Script(tokens=["See", " [1]", " and", " [2]", "."]))
    console(browser)  # drop what came before
    browser.get(f"{service.url}/llm/playground")
    browser.find_element(By.ID, "question").send_keys("Which?")
    for url, text in [(EVIL, "Evil."), (GOOD, "Good.")]:
        browser.find_element(By.ID, "add-doc").click()
        doc = browser.find_elements(By.CSS_SELECTOR, "#docs .doc")[-1]
        doc.find_element(By.CLASS_NAME, "doc-url").send_keys(url)
        doc.find_element(By.CLASS_NAME, "doc-text").send_keys(text)
    browser.find_element(By.ID, "ask").click()
    status = browser.find_element(By.ID, "status")
    WebDriverWait(browser, 30).until(lambda b: status.text.startswith(("Done", "Error")))
    assert status.text == "Done (stop)."  # the script ran and fetched under the policy
    answer = browser.find_element(By.ID, "answer")
    assert answer.value_of_css_property("white-space") == "pre-wrap"  # the inline style applies
    assert answer.text == "See [1] and [2]."
    links = answer.find_elements(By.TAG_NAME, "a")
    assert [(a.text, a.get_attribute("href")) for a in links] == [("[2]", GOOD)]
    sources = browser.find_elements(By.CSS_SELECTOR, "#sources li")
    assert sources[0].text == EVIL and sources[0].find_elements(By.TAG_NAME, "a") == []
    assert [a.get_attribute("href") for a in sources[1].find_elements(By.TAG_NAME, "a")] == [GOOD]
    hrefs = [a.get_attribute("href") or "" for a in browser.find_elements(By.TAG_NAME, "a")]
    assert not any(href.lower().startswith("javascript") for href in hrefs)
    refused = [message for message in console(browser) if "Content Security" in message]
    assert refused == []  # the policy blocks nothing the page itself does
