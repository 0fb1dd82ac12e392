"""The web page in a real headless Chromium (Debian's chromium + chromium-driver); skipped where none is installed."""

import shutil
import tempfile
import uuid

import pytest

from lte.method.editor import LTEEditor
from retrieval.store import EditStore, open_client
from tests.conftest import running_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="chromium and chromedriver are not installed")


@pytest.fixture
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tempfile.mkdtemp()}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=DRIVER), options=options)
    yield driver
    driver.quit()


def test_add_search_ask_and_delete_from_the_page(tiny, embedder, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    editor = LTEEditor(tiny, EditStore(open_client(), f"web-{uuid.uuid4().hex[:8]}", embedder))
    with running_server(editor, api_key="page-key") as base:
        browser.get(base + "/")
        wait = WebDriverWait(browser, 30)
        browser.find_element(By.ID, "key").send_keys("page-key")
        browser.execute_script("document.getElementById('key').dispatchEvent(new Event('change'))")
        for field, value in (("subject", "The Space Needle"), ("prompt", "The Space Needle is located in"),
                             ("target", "Goa")):
            browser.find_element(By.ID, field).send_keys(value)
        browser.find_element(By.ID, "add").click()
        wait.until(lambda d: "Goa" in d.find_element(By.ID, "edits").text)
        browser.find_element(By.ID, "question").send_keys("Where is the Space Needle?")
        browser.find_element(By.ID, "ask").click()
        wait.until(lambda d: "edits used" in d.find_element(By.ID, "used").text)
        assert "The Space Needle is located in Goa." in browser.find_element(By.ID, "used").text
        browser.find_element(By.CSS_SELECTOR, "#edits button.delete").click()
        wait.until(lambda d: "Goa" not in d.find_element(By.ID, "edits").text)
        assert editor.store.count() == 0
