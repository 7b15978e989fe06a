"""The playground in a real browser: headless Chromium driven by Selenium opens /,
types a prompt, presses Generate, sees the text stream in, presses Stop; the
browser's console stays free of errors, and the stopped request frees its rows."""

import shutil
import tempfile
import time

import pytest
from serving import ServerProcess, httpx, metrics, tiny_checkpoint, wait_for

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: pip install -e '.[test]'")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                                reason="no browser installed: apt-get install chromium chromium-driver")


LONG = 5_000_000  # characters asked for by the request that is stopped (over 10 s of generation)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ServerProcess(tiny_checkpoint(tmp_path_factory), "--max-length", LONG) as s:
        yield s


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="charrnn-chromium-")
    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", "--window-size=1200,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_generate_streams_text_after_the_prompt_and_stop_stops_it(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server.url + "/")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: "best.safetensors" in d.find_element(By.ID, "model").text)
    assert browser.find_element(By.ID, "keybox").get_attribute("hidden") is not None  # no key needed here
    prompt = browser.find_element(By.ID, "prompt")
    prompt.clear()
    prompt.send_keys("ROMEO:")
    length = browser.find_element(By.ID, "max_tokens")
    length.clear()
    length.send_keys(str(LONG))  # minutes of generation: it is stopped long before
    browser.find_element(By.ID, "generate").click()

    def shown(what: str = "length"):  # asked in JavaScript: Selenium's .text of a long text is slow
        return browser.execute_script(f"return document.getElementById('output').textContent.{what}")

    wait.until(lambda d: shown() > 200)
    first = shown()
    wait.until(lambda d: shown() > first)  # still growing: streamed
    assert shown("slice(0, 6)") == "ROMEO:"
    assert "characters/s" in browser.find_element(By.ID, "stats").text
    assert browser.find_element(By.ID, "generate").get_attribute("disabled") is not None
    browser.find_element(By.ID, "stopbtn").click()
    wait.until(lambda d: d.find_element(By.ID, "generate").get_attribute("disabled") is None)
    assert "stopped" in browser.find_element(By.ID, "stats").text
    stopped = shown()
    time.sleep(0.5)
    assert shown() == stopped < LONG
    with httpx.Client() as client:  # the aborted request's row is freed
        assert wait_for(lambda: metrics(client, server.url)[("charrnn_active_streams", "")] == 0)
    assert browser.find_element(By.ID, "error").text == ""
    errors = [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
    assert errors == []


def test_a_seed_gives_the_same_text_as_the_api(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server.url + "/")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: "best.safetensors" in d.find_element(By.ID, "model").text)
    for field, value in (("prompt", "To be"), ("max_tokens", "300"), ("seed", "42")):
        element = browser.find_element(By.ID, field)
        element.clear()
        element.send_keys(value)
    browser.find_element(By.ID, "generate").click()
    wait.until(lambda d: "finished" in d.find_element(By.ID, "stats").text)
    answer = httpx.post(server.url + "/v1/completions",
                        json={"prompt": "To be", "max_tokens": 300, "seed": 42, "temperature": 0.8, "top_p": 1}).json()
    shown = browser.execute_script("return document.getElementById('output').textContent")
    assert shown == "To be" + answer["choices"][0]["text"]
    assert "seed 42" in browser.find_element(By.ID, "stats").text
    assert [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")] == []


def test_with_an_api_key_the_page_asks_for_it_and_sends_it(tmp_path_factory, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with ServerProcess(tiny_checkpoint(tmp_path_factory), "--api-key", "page-key") as keyed:
        browser.get(keyed.url + "/")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda d: d.find_element(By.ID, "keybox").is_displayed())
        assert browser.find_element(By.ID, "model").text == ""  # nothing asked of the API without the key
        browser.find_element(By.ID, "key").send_keys("page-key")
        browser.find_element(By.ID, "usekey").click()
        wait.until(lambda d: "best.safetensors" in d.find_element(By.ID, "model").text)
        for field, value in (("prompt", "A"), ("max_tokens", "50")):
            element = browser.find_element(By.ID, field)
            element.clear()
            element.send_keys(value)
        browser.find_element(By.ID, "generate").click()
        wait.until(lambda d: "finished" in d.find_element(By.ID, "stats").text)
        assert len(browser.execute_script("return document.getElementById('output').textContent")) == 51
    assert [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")] == []
