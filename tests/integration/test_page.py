"""The page at / in a real browser (headless Chromium through chromedriver) against the real pipeline.

Screenshots of each step are saved under the test's tmp path and copied to .thumbs/artifacts/page/, where a CI
run keeps them (devtools/test-tools/chromium.sh installs the browser).
"""
from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable, Iterator

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from .stack import REPO, ImageServer, Stack, running_stack
from .test_pipeline import photo

pytestmark = pytest.mark.integration

ARTIFACTS = REPO / ".thumbs" / "artifacts" / "page"
WAIT_SECONDS = 60  # a task takes well under a second here; this bounds a stuck page, not a slow one
SOURCE_SIZE = (300, 200)
RESULT_LOADED = """const figure = document.getElementById("result"), img = document.getElementById("result-image");
return !figure.hidden && img.complete && img.naturalWidth > 0 ? [img.naturalWidth, img.naturalHeight] : null;"""

Screenshot = Callable[[str], None]


def fitted(box: tuple[int, int], size: tuple[int, int] = SOURCE_SIZE) -> tuple[int, int]:
    """The thumbnail's size: the source scaled into the box, keeping its aspect ratio, never enlarged."""
    scale = min(box[0] / size[0], box[1] / size[1], 1.0)
    return round(size[0] * scale), round(size[1] * scale)


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, cassandra_contact: tuple[tuple[str, ...], int], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    names = ("api", "fetcher", "resizer", "projector", "stats")
    with running_stack(kafka_bootstrap, cassandra_contact, tmp_path_factory.mktemp("stack"), names=names) as stack:
        yield stack


@pytest.fixture(scope="module")
def browser(stack: Stack) -> Iterator[WebDriver]:
    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,1500"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(stack.api + "/")
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def screenshot(browser: WebDriver, tmp_path_factory: pytest.TempPathFactory) -> Screenshot:
    folder = tmp_path_factory.mktemp("page-screenshots")

    def save(name: str) -> None:
        path = folder / f"{name}.png"
        assert browser.save_screenshot(str(path)), name
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, ARTIFACTS / path.name)

    return save


def submit(browser: WebDriver, url: str, width: int | None = None, height: int | None = None, image_format: str = "",
           fit: str = "") -> None:
    for field, value in (("url", url), ("width", width), ("height", height)):
        element = browser.find_element(By.ID, field)
        element.clear()
        if value is not None:
            element.send_keys(str(value))
    Select(browser.find_element(By.ID, "format")).select_by_value(image_format)
    Select(browser.find_element(By.ID, "fit")).select_by_value(fit)
    browser.find_element(By.CSS_SELECTOR, "#request button").click()


def status_text(browser: WebDriver) -> str:
    return str(browser.find_element(By.ID, "status").text)


def wait_for_result(browser: WebDriver) -> tuple[int, int]:
    size = WebDriverWait(browser, WAIT_SECONDS).until(lambda d: d.execute_script(RESULT_LOADED),
                                                      f"no thumbnail shown; status: {status_text(browser)}")
    return int(size[0]), int(size[1])


@pytest.mark.parametrize("box,image_format,fit,content_type", [
    ((100, 100), "", "", "image/jpeg"), ((160, 120), "webp", "", "image/webp"), ((90, 90), "png", "cover", "image/png")])
def test_a_thumbnail_appears_with_its_facts(browser: WebDriver, images: ImageServer, screenshot: Screenshot,
                                            box: tuple[int, int], image_format: str, fit: str, content_type: str) -> None:
    data = photo(*SOURCE_SIZE, seed=box[0])
    url = images.add(f"/page/{box[0]}.jpg", data)
    submit(browser, url, *(box if image_format else (None, None)), image_format=image_format, fit=fit)  # the first: defaults
    width, height = box if fit == "cover" else fitted(box)  # cover fills the box exactly
    assert wait_for_result(browser) == (width, height)
    facts = browser.find_element(By.ID, "result-facts").text
    assert f"{width} × {height} px" in facts and content_type in facts and hashlib.sha256(data).hexdigest() in facts
    assert "Deduplicated\nno" in facts  # each case's source is new to this module's own keyspace
    assert "done" in status_text(browser)
    assert browser.find_element(By.ID, "result-image").get_attribute("alt") == f"Thumbnail of {url}"
    screenshot(f"success-{image_format or 'default'}")


def test_a_failed_task_shows_its_error_code(browser: WebDriver, images: ImageServer, screenshot: Screenshot) -> None:
    submit(browser, images.add("/page/missing.jpg", b"not here", "text/plain", status=404))
    WebDriverWait(browser, WAIT_SECONDS).until(lambda d: "failed" in status_text(d), "no failure shown")
    assert "SOURCE_HTTP_ERROR" in status_text(browser)
    assert not browser.find_element(By.ID, "result").is_displayed()
    screenshot("failure")


def test_a_refused_request_shows_the_http_error(browser: WebDriver, screenshot: Screenshot) -> None:
    submit(browser, "ftp://127.0.0.2/cat.jpg")  # a valid URL for the browser, not for the service
    WebDriverWait(browser, WAIT_SECONDS).until(lambda d: "refused" in status_text(d), "no refusal shown")
    assert "HTTP 422" in status_text(browser) and "INVALID_REQUEST" in status_text(browser)
    screenshot("refused")


def test_the_gallery_keeps_this_browsers_finished_thumbnails(browser: WebDriver, stack: Stack, screenshot: Screenshot) -> None:
    browser.get(stack.api + "/")  # a fresh load: the gallery comes from local storage alone
    loaded = """return Array.from(document.querySelectorAll("#gallery img"))
        .map((img) => img.complete && img.naturalWidth > 0 ? [img.naturalWidth, img.naturalHeight] : null);"""
    sizes = WebDriverWait(browser, WAIT_SECONDS).until(
        lambda d: (found := d.execute_script(loaded)) and all(found) and found, "gallery images not loaded")
    assert sizes == [[90, 90], list(fitted((160, 120))), list(fitted((100, 100)))]  # newest first; the failure is not kept
    screenshot("gallery")


def test_the_statistics_panel_counts_this_modules_tasks(browser: WebDriver, stack: Stack, screenshot: Screenshot) -> None:
    """The environment began empty: three thumbnails, one failure and one refusal (never a task) so far."""
    def totals(d: WebDriver) -> str | None:
        text = d.find_element(By.ID, "stats").text
        return text if "Requested\n4" in text and "Failed\n1" in text else None

    browser.get(stack.api + "/")
    text = WebDriverWait(browser, WAIT_SECONDS).until(totals, "statistics never showed this module's tasks")
    assert "Succeeded\n3" in text and "SOURCE_HTTP_ERROR: 1" in text
    WebDriverWait(browser, WAIT_SECONDS).until(lambda d: "fetcher " in d.find_element(By.ID, "stats").text,
                                               "the stages' consumer lag never showed")
    bars = browser.find_elements(By.CSS_SELECTOR, "#throughput span")
    assert len(bars) == 90 and sum(int(bar.get_attribute("data-count") or 0) for bar in bars) == 4  # 15 min of 10 s
    screenshot("statistics")


def test_the_statistics_panel_says_when_statistics_are_down(browser: WebDriver, stack: Stack, screenshot: Screenshot) -> None:
    stack.stop("stats")
    try:
        browser.get(stack.api + "/")
        WebDriverWait(browser, WAIT_SECONDS).until(lambda d: "not available" in d.find_element(By.ID, "stats").text,
                                                   "statistics panel never settled")
        assert "stats stage is not answering" in browser.find_element(By.ID, "stats").text
        screenshot("statistics-down")
    finally:
        stack.start("stats")

