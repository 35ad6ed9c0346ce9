"""The playground page in a real headless Chromium (Debian's, driven by Selenium) against the
service on the embedded llama.cpp model."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.support.fake_openai import FakeOpenAI, Script
from tests.support.servers import ServiceServer

pytestmark = pytest.mark.system

DL_URL = "https://en.wikipedia.org/wiki/Deep_learning"


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "make system-deps installs chromium and chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    browser = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    yield browser
    browser.quit()


@pytest.mark.embedded
def test_page_is_self_contained(llama_service: ServiceServer) -> None:
    resp = httpx.get(f"{llama_service.url}/llm/playground")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    page = resp.text
    assert "../v1/chat/completions" in page
    assert "http://" not in page.replace("http(s)", "") and "src=" not in page  # no CDN


@pytest.mark.embedded
@pytest.mark.browser
def test_question_documents_streamed_answer_and_citation_links(
    llama_service: ServiceServer, browser: WebDriver, tmp_path: Path
) -> None:
    browser.get(f"{llama_service.url}/llm/playground")
    browser.find_element(By.ID, "question").send_keys("What is deep learning?")
    # A pasted document with a URL ...
    browser.find_element(By.ID, "add-doc").click()
    doc = browser.find_elements(By.CSS_SELECTOR, "#docs .doc")[-1]
    doc.find_element(By.CLASS_NAME, "doc-url").send_keys(DL_URL)
    doc.find_element(By.CLASS_NAME, "doc-text").send_keys(
        "Deep learning is a family of machine learning methods based on neural networks."
    )
    # ... and one picked as a file.
    notes = tmp_path / "notes.txt"
    notes.write_text("Neural networks have layers of weighted connections.")
    browser.find_element(By.ID, "files").send_keys(str(notes))
    WebDriverWait(browser, 5).until(
        lambda b: len(b.find_elements(By.CSS_SELECTOR, "#docs .doc")) == 2
    )
    picked = browser.find_elements(By.CSS_SELECTOR, "#docs .doc")[1]
    picked_text = picked.find_element(By.CLASS_NAME, "doc-text").get_property("value")
    assert isinstance(picked_text, str) and "weighted connections" in picked_text
    max_tokens = browser.find_element(By.ID, "max-tokens")
    max_tokens.clear()
    max_tokens.send_keys("24")

    browser.find_element(By.ID, "ask").click()
    status = browser.find_element(By.ID, "status")
    WebDriverWait(browser, 60).until(lambda b: status.text.startswith(("Done", "Error")))
    assert status.text in ("Done (length).", "Done (stop)."), status.text

    answer = browser.find_element(By.ID, "answer")
    assert answer.text.strip()
    assert int(answer.get_attribute("data-chunks") or 0) > 1  # it streamed in, piece by piece
    sources = browser.find_elements(By.CSS_SELECTOR, "#sources li")
    assert len(sources) == 2
    link = sources[0].find_element(By.TAG_NAME, "a")
    assert link.get_attribute("href") == DL_URL and link.text == DL_URL
    assert sources[1].text == "playground/notes.txt"  # a file: named, not linked
    assert sources[1].find_elements(By.TAG_NAME, "a") == []


@pytest.mark.embedded
@pytest.mark.browser
def test_error_is_shown(llama_service: ServiceServer, browser: WebDriver) -> None:
    browser.get(f"{llama_service.url}/llm/playground")
    browser.find_element(By.ID, "question").send_keys("Hi")
    browser.find_element(By.ID, "template").send_keys("no-such-template")
    browser.find_element(By.ID, "ask").click()
    status = browser.find_element(By.ID, "status")
    WebDriverWait(browser, 30).until(lambda b: status.text.startswith("Error"))
    assert "422" in status.text and "no-such-template" in status.text
    assert status.get_attribute("class") == "error"


@pytest.mark.browser
def test_cited_ids_in_the_answer_become_links(
    service: ServiceServer, fake: FakeOpenAI, browser: WebDriver
) -> None:
    """Against the fake server, whose answer cites [2]: that citation links to document 2,
    which is listed in bold."""
    fake.push(Script(tokens=["Networks", " learn", " [2]", "."]))
    browser.get(f"{service.url}/llm/playground")
    browser.find_element(By.ID, "question").send_keys("How do networks learn?")
    for url, text in [(DL_URL, "Deep learning."), ("https://example.com/nn", "Weights.")]:
        browser.find_element(By.ID, "add-doc").click()
        doc = browser.find_elements(By.CSS_SELECTOR, "#docs .doc")[-1]
        doc.find_element(By.CLASS_NAME, "doc-url").send_keys(url)
        doc.find_element(By.CLASS_NAME, "doc-text").send_keys(text)
    browser.find_element(By.ID, "ask").click()
    status = browser.find_element(By.ID, "status")
    WebDriverWait(browser, 30).until(lambda b: status.text.startswith(("Done", "Error")))
    assert status.text == "Done (stop)."
    answer = browser.find_element(By.ID, "answer")
    assert answer.text == "Networks learn [2]."
    link = answer.find_element(By.TAG_NAME, "a")
    assert (link.text, link.get_attribute("href")) == ("[2]", "https://example.com/nn")
    cited = browser.find_elements(By.CSS_SELECTOR, "#sources li.cited a")
    assert [a.get_attribute("href") for a in cited] == ["https://example.com/nn"]
    assert fake.requests[-1]["messages"][0]["content"].count("https://example.com/nn") == 1
