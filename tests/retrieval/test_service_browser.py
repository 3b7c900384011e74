"""The search page in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``).

Skipped, saying why, where Chromium, its driver or selenium is not installed.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
if not (CHROMIUM and DRIVER):
    pytest.skip(
        "Chromium or chromedriver missing (apt-get install chromium chromium-driver)",
        allow_module_level=True,
    )

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def site(
    tmp_path_factory: pytest.TempPathFactory,
    retrieval_index: tuple[Path, Path, Path],
    serve_index: Callable[..., AbstractContextManager[str]],
) -> Iterator[str]:
    index_dir = retrieval_index[2]
    log = tmp_path_factory.mktemp("browser") / "serve.log"
    with serve_index(index_dir, log) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.add_argument("--window-size=1280,1000")
    driver = webdriver.Chrome(service=webdriver.ChromeService(DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver: webdriver.Chrome, condition, timeout: float = 60):  # noqa: ANN001, ANN202
    return WebDriverWait(driver, timeout).until(lambda d: condition(d))


def _thumbnails_loaded(driver: webdriver.Chrome) -> bool:
    return driver.execute_script(
        "const imgs = [...document.querySelectorAll('#results img.thumb')];"
        "return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);"
    )


def test_search_page_text_image_record_and_errors(
    browser: webdriver.Chrome, site: str, synthetic_dir: Path, tmp_path: Path
) -> None:
    browser.get(site + "/")
    _wait(browser, lambda d: "40 indexed studies" in d.find_element(By.ID, "summary").text)

    # text → images: a grid of k cards in the API's order, each with its thumbnail
    query = "moderate left pleural effusion"
    browser.find_element(By.ID, "query").send_keys(query)
    browser.find_element(By.ID, "text-go").click()
    _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .hit")) == 10)
    _wait(browser, _thumbnails_loaded)
    api = httpx.post(f"{site}/search/text", json={"text": query, "k": 10}).json()["hits"]
    cards = browser.find_elements(By.CSS_SELECTOR, "#results .hit")
    assert [c.get_attribute("data-id") for c in cards] == [h["id"] for h in api]
    first = cards[0]
    assert f"{api[0]['score']:.3f}" in first.text
    assert api[0]["metadata"]["report"][:30] in first.find_element(By.CLASS_NAME, "report").text
    browser.save_screenshot(str(tmp_path / "page.png"))
    assert (tmp_path / "page.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a click opens the record
    first.click()
    _wait(browser, lambda d: d.find_element(By.ID, "record").get_attribute("open") is not None)
    _wait(browser, lambda d: d.find_element(By.ID, "record-id").text == api[0]["id"])
    assert browser.find_element(By.ID, "record-report").text == api[0]["metadata"]["report"].strip()
    browser.find_element(By.ID, "record-close").click()
    _wait(browser, lambda d: d.find_element(By.ID, "record").get_attribute("open") is None)

    # image upload → similar images: the indexed image finds itself first
    record = json.loads((synthetic_dir / "records.jsonl").read_text().splitlines()[7])
    browser.find_element(By.ID, "file").send_keys(str(synthetic_dir / record["image"]))
    Select(browser.find_element(By.ID, "image-k")).select_by_visible_text("5")
    browser.find_element(By.ID, "image-go").click()
    _wait(browser, lambda d: "images for" in d.find_element(By.ID, "status").text)
    cards = browser.find_elements(By.CSS_SELECTOR, "#results .hit")
    assert len(cards) == 5 and cards[0].get_attribute("data-id") == record["id"]

    # classify the same image: one probability per label, the API's, in the order asked
    asked = "pleural_effusion, pneumothorax, nodule"
    labels = browser.find_element(By.ID, "labels")
    labels.clear()
    labels.send_keys(asked)
    browser.find_element(By.ID, "classify-go").click()
    _wait(browser, lambda d: "label probabilities for" in d.find_element(By.ID, "status").text)
    png = (synthetic_dir / record["image"]).read_bytes()
    probabilities = httpx.post(
        f"{site}/classify", files={"file": ("q.png", png)}, data={"labels": asked}
    ).json()["probabilities"]
    rows = browser.find_elements(By.CSS_SELECTOR, "#results .prob")
    assert [r.get_attribute("data-label") for r in rows] == list(probabilities)
    shown = [r.find_element(By.CLASS_NAME, "p").text for r in rows]
    assert shown == [f"{p:.3f}" for p in probabilities.values()]
    labels.clear()
    labels.send_keys("situs_inversus")
    browser.find_element(By.ID, "classify-go").click()
    _wait(browser, lambda d: "no prompts for label" in d.find_element(By.ID, "status").text)
    assert browser.find_element(By.ID, "status").get_attribute("class") == "error"

    # the server's message reaches the user for a bad request
    box = browser.find_element(By.ID, "query")
    box.clear()
    box.send_keys("   ")
    browser.find_element(By.ID, "text-go").click()
    _wait(browser, lambda d: "text is blank" in d.find_element(By.ID, "status").text)
    assert browser.find_element(By.ID, "status").get_attribute("class") == "error"
