"""The console in a real browser (Debian's chromium, headless, through selenium and chromedriver) against a
live federation: sign-in (a wrong password refused), every view opened and compared with the leader, then
pause -> resume and a release carried out by clicking, each checked on the federation itself. A
screenshot of each view is saved (HFL_SCREENSHOTS=folder keeps them; HFL_README_SCREENSHOT=1 also
refreshes docs/images/console.png)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from hfl.console import data
from hfl.demo import Federation
from hfl.operator_cli import quarantine_facility
from tests.integration.helpers import leader_status, start_federation, wait_for_round

pytestmark = pytest.mark.integration

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip(
        "chromium and chromium-driver are not installed (apt-get install -y chromium chromium-driver); "
        "the real-browser console test is skipped",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "browser test password"
VIEWS = ("Federation map", "Training", "Privacy", "Consensus and ledger", "Security", "Controls")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("browser")
    fed: Federation
    fed, _procs = start_federation(out, facilities=5, fogs=1, validators=4, rounds=0)
    try:
        (out / "endpoints.json").write_text(json.dumps(fed.endpoints()))
        wait_for_round(data.Connection.from_args(str(out)).leader or "", 2)
        yield out
    finally:
        fed.stop_all()


@pytest.fixture(scope="module")
def console(run_dir: Path) -> Iterator[str]:
    port = _free_port()
    env = {**os.environ, "HFL_CONSOLE_PASSWORD": PASSWORD}
    cmd = [sys.executable, "-m", "hfl.cli", "console", "--run", str(run_dir), "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the console did not start")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM or ""
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1100"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver: WebDriver, what: str, find: object, limit_s: float = 60) -> WebElement:
    """Wait until ``find(driver)`` returns an element (or True); a bound on waiting, not on speed. Streamlit
    re-draws the page as it loads, so an element that went stale while being read means "look again"."""
    wait = WebDriverWait(
        driver, limit_s, poll_frequency=0.3, ignored_exceptions=(StaleElementReferenceException,)
    )
    return wait.until(find, what)  # type: ignore[arg-type]


def _text_appears(driver: WebDriver, text: str) -> None:
    _wait(driver, f"'{text}' to appear", lambda d: text in d.find_element(By.TAG_NAME, "body").text)


def _button(driver: WebDriver, label: str, within: WebElement | None = None) -> WebElement:
    root = within or driver

    def button(_: WebDriver) -> WebElement | None:
        return next((b for b in root.find_elements(By.TAG_NAME, "button") if b.text.strip() == label), None)

    return _wait(driver, f"the button '{label}'", button)


def _choose(driver: WebDriver, label: str, within: WebElement | None = None) -> None:
    """Click a radio option by its visible label."""
    root = within or driver

    def option(_: WebDriver) -> WebElement | None:
        return next(
            (e for e in root.find_elements(By.CSS_SELECTOR, "label") if e.text.strip() == label), None
        )

    _wait(driver, f"the option '{label}'", option).click()


def _form(driver: WebDriver, title: str) -> WebElement:
    def form(d: WebDriver) -> WebElement | None:
        return next(
            (f for f in d.find_elements(By.CSS_SELECTOR, '[data-testid="stForm"]') if title in f.text), None
        )

    return _wait(driver, f"the form '{title}'", form)


def _fill(form: WebElement, label: str, text: str) -> None:
    box = form.find_element(By.CSS_SELECTOR, f'input[aria-label="{label}"]')
    box.send_keys(Keys.CONTROL, "a")  # clear() does not reach Streamlit's own copy of the value
    box.send_keys(Keys.DELETE)
    box.send_keys(text)


def _shot(driver: WebDriver, folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"console-{name.lower().replace(' ', '-')}.png"
    driver.save_screenshot(str(path))
    return path


def test_sign_in_views_and_controls_in_chromium(
    run_dir: Path, console: str, browser: WebDriver, tmp_path: Path
) -> None:
    shots = Path(os.environ.get("HFL_SCREENSHOTS") or tmp_path / "screenshots")
    conn = data.Connection.from_args(str(run_dir))
    leader = conn.leader or ""
    assert quarantine_facility("facility-05", "to be released in the browser", str(run_dir), None) == 0

    browser.get(console)
    _text_appears(browser, "hfl console: sign in")
    assert "Federation map" not in browser.find_element(By.TAG_NAME, "body").text  # nothing before sign-in
    login = _form(browser, "Password")
    _fill(login, "Password", "not the password")
    _button(browser, "Sign in", login).click()
    _text_appears(browser, "Wrong password.")
    login = _form(browser, "Password")
    _fill(login, "Password", PASSWORD)
    _button(browser, "Sign in", login).click()
    _text_appears(browser, "Federation map")

    pictures = {}
    for view in VIEWS:
        before = leader_status(leader).committed_round
        _choose(browser, view)
        _wait(
            browser,
            f"the {view} view",
            lambda d, v=view: any(h.text == v for h in d.find_elements(By.TAG_NAME, "h2")),
        )
        time.sleep(1.0)  # let charts and the map finish drawing before the picture
        pictures[view] = _shot(browser, shots, view)
        body = browser.find_element(By.TAG_NAME, "body").text
        if view == "Training":  # rounds go on meanwhile: what is shown lies between two readings
            shown = re.search(r"Rounds committed\n(\d+)", body)
            assert shown is not None and "ROC AUC" in body, body[:500]
            assert before <= int(shown.group(1)) <= leader_status(leader).committed_round
        if view == "Federation map":
            assert "facility-05" in body and "quarantined" in body
    assert all(p.stat().st_size > 10_000 for p in pictures.values())

    # Pause -> resume, by clicking; the leader really stops committing rounds and starts again.
    form = _form(browser, "Pause, resume")
    _choose(browser, "Pause", form)
    _fill(form, "Reason", "checking in the browser")
    _button(browser, "Apply", form).click()
    _text_appears(browser, "Training: paused (checking in the browser)")
    deadline = time.monotonic() + 60
    while not leader_status(leader).state.startswith("paused by the operator"):
        assert time.monotonic() < deadline, "the leader did not pause"
        time.sleep(0.3)
    paused_at = leader_status(leader).committed_round
    time.sleep(3)
    assert leader_status(leader).committed_round == paused_at
    form = _form(browser, "Pause, resume")
    _choose(browser, "Resume", form)
    _fill(form, "Reason", "checked")
    _button(browser, "Apply", form).click()
    _text_appears(browser, "Training: running.")
    wait_for_round(leader, paused_at + 1)

    # Release the quarantined facility, by clicking.
    form = _form(browser, "Release a quarantined facility")
    _fill(form, "Reason", "checked: it was a labelling mistake")
    _button(browser, "Release", form).click()
    _text_appears(browser, "facility-05 is released")
    snap = data.snapshot(conn)
    assert snap.nodes is not None and "facility-05" not in snap.nodes.quarantined
    _shot(browser, shots, "controls-after")
    if os.environ.get("HFL_README_SCREENSHOT"):
        shutil.copy(pictures["Federation map"], ROOT / "docs" / "images" / "console.png")
