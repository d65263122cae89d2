"""`starflow serve` in a real browser: Debian's Chromium, headless, driven by Selenium through Debian's ChromeDriver.

Starts the command on a tiny model on 127.0.0.1, types a prompt, presses Generate, waits for the picture and
checks it is the pipeline's own sample (not a blank or broken image); a bad input shows a message on the page.
Skipped without the system browser (scripts/install-browser.sh installs it); STARFLOW_REQUIRE_BROWSER=1 (set
by .ci/run) turns the skip into a failure.
"""
import io
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import starflow

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
pytestmark = pytest.mark.browser


def _missing() -> str | None:
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        return f"no system browser ({CHROMIUM}, {CHROMEDRIVER}): run scripts/install-browser.sh"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return None


@pytest.fixture
def browser(tmp_path):
    why = _missing()
    if why:
        if os.environ.get("STARFLOW_REQUIRE_BROWSER") == "1":
            pytest.fail(why)
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,1600",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture
def served(tmp_path, pipe_factory, port):
    """`starflow serve --model DIR` in a subprocess on a free loopback port -> (url, the pipeline saved in DIR)."""
    pipe = pipe_factory()
    model = pipe.save_pretrained(tmp_path / "tiny-model")
    src = str(Path(starflow.__file__).resolve().parents[1])       # this checkout's package, in the child too
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    log = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "starflow.cli.main", "serve", "--model", str(model), "--port",
                             str(port), "--device", "cpu", "--outputs", str(tmp_path / "outputs")],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"

    def up():
        if proc.poll() is not None:
            log.seek(0)
            raise AssertionError(f"starflow serve exited with {proc.returncode}:\n{log.read()}")
        try:
            return urllib.request.urlopen(url, timeout=2).status == 200
        except OSError:
            return False
    try:
        _wait(up, 120, "starflow serve to answer")
        yield url, pipe
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _wait(predicate, timeout: float, what: str, poll: float = 0.2):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _image_in(driver, css: str):
    """The first loaded <img> under `css` (complete, with a natural size), else None."""
    return driver.execute_script(
        "const i = document.querySelector(arguments[0]);"
        "return i && i.complete && i.naturalWidth > 0 ? i : null;", css)


def test_generate_in_a_real_browser(browser, served, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    url, pipe = served
    browser.get(url)
    prompt = _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#t2i-prompt textarea"), 60, "the prompt box")[0]
    prompt.send_keys("3")
    browser.find_element(By.CSS_SELECTOR, "#t2i-generate").click()
    img = _wait(lambda: _image_in(browser, "#t2i-gallery img"), 120, "the generated image")
    _wait(lambda: "1 image of 8x8 px" in browser.find_element(By.ID, "t2i-info").text, 30, "the settings")
    shot = tmp_path / "page.png"
    browser.save_screenshot(str(shot))
    (tmp_path / "image.png").write_bytes(img.screenshot_as_png)
    print(f"screenshots: {shot}, {tmp_path / 'image.png'}")

    # the picture the page loaded is the pipeline's own sample for this prompt and seed, enlarged 32x
    assert browser.execute_script("return arguments[0].naturalWidth", img) == 256
    loaded = np.asarray(Image.open(io.BytesIO(urllib.request.urlopen(img.get_attribute("src")).read())).convert("L"))
    want = pipe("3", seed=0, output_type="np").images[0, ..., 0] * 255                  # (8, 8)
    assert loaded.shape == (256, 256) and np.abs(loaded[16::32, 16::32] - want).max() <= 1.5
    assert loaded.std() > 10 and len(np.unique(loaded)) >= 8                            # not blank
    # and the browser drew it: the element's own pixels on the page vary too
    drawn = np.asarray(Image.open(io.BytesIO(img.screenshot_as_png)).convert("L"))
    assert drawn.std() > 10
    info = browser.find_element(By.ID, "t2i-info").text
    assert "seed" in info and "jacobi" in info

    # a bad input: a message on the page, no stack trace, and the page keeps working
    prompt.send_keys(Keys.CONTROL, "a")
    prompt.send_keys(Keys.BACKSPACE)                    # typed away: .clear() would not tell the page
    browser.find_element(By.CSS_SELECTOR, "#t2i-generate").click()
    try:
        _wait(lambda: "type a prompt" in browser.find_element(By.TAG_NAME, "body").text, 30, "the error message")
    finally:
        browser.save_screenshot(str(tmp_path / "error.png"))
    assert "Traceback" not in browser.find_element(By.TAG_NAME, "body").text
