"""A headless Chromium driven by Selenium, and `reweigh explore`'s app served in a thread, for the browser tests and
scripts/explore_screenshots.py.

Chromium and its driver are Debian's (``apt-get install chromium chromium-driver``: /usr/bin/chromium and
/usr/bin/chromedriver), started with the flags this machine's closed network needs (no background networking,
no component updates) and a fresh profile.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

CHROMIUM_FLAGS = ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                  '--disable-background-networking', '--disable-component-update', '--disable-sync',
                  '--disable-dev-shm-usage', '--window-size=1500,1150', '--hide-scrollbars')


class BrowserUnavailable(RuntimeError):
    """Selenium, Chromium or its driver is missing, or Chromium does not start."""


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A Selenium ``webdriver.Chrome`` on Debian's headless Chromium, quit on exit.

    Raises:
        BrowserUnavailable: Naming what is missing or why Chromium did not start.
    """
    try:
        from selenium import webdriver
        from selenium.common.exceptions import WebDriverException
    except ImportError as e:
        raise BrowserUnavailable(f'selenium is not installed ({e})') from None
    binary = shutil.which('chromium') or shutil.which('chromium-browser')
    driver_path = shutil.which('chromedriver')
    if not binary or not driver_path:
        raise BrowserUnavailable('no chromium or chromedriver on PATH (apt-get install chromium chromium-driver)')
    with tempfile.TemporaryDirectory(prefix='reweigh-chromium-') as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = binary
        for flag in (*CHROMIUM_FLAGS, f'--user-data-dir={profile}'):
            options.add_argument(flag)
        try:
            driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
        except WebDriverException as e:
            raise BrowserUnavailable(f'chromium did not start: {(e.msg or str(e)).splitlines()[0]}') from None
        try:
            yield driver
        finally:
            driver.quit()


@contextlib.contextmanager
def served(explorer: Any) -> Iterator[str]:
    """``explorer``'s app served by uvicorn on a free loopback port, in a thread; yields its URL."""
    import uvicorn

    from reweigh.cli.explore_cmd import listen
    from reweigh.explore.app import create_app

    sock = listen('127.0.0.1', 0)
    server = uvicorn.Server(uvicorn.Config(create_app(explorer), log_level='warning'))
    thread = threading.Thread(target=server.run, kwargs={'sockets': [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError('the explore app did not start')
        time.sleep(0.05)
    try:
        yield f'http://127.0.0.1:{sock.getsockname()[1]}/'
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def wait_for(driver: Any, script: str, timeout: float = 30.0) -> Any:
    """Poll the page's JavaScript ``script`` (an expression) until it is truthy; return its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = driver.execute_script(f'return {script};')
        if value:
            return value
        if time.monotonic() > deadline:
            logs = ''
            with contextlib.suppress(Exception):
                logs = '; '.join(entry['message'] for entry in driver.get_log('browser'))
            raise TimeoutError(f'the page never satisfied {script!r}{f" (console: {logs})" if logs else ""}')
        time.sleep(0.1)


def click_until(driver: Any, element: Any, until: str, offset: tuple[int, int] | None = None, tries: int = 3) -> Any:
    """Move the mouse onto ``element`` (at ``offset`` from its centre), rest there, click, and wait for ``until``;
    again, up to ``tries`` times, where the page did not react (plotly clicks what it has hovered, and a busy
    machine can be late to hover). Returns ``until``'s value.

    Raises:
        TimeoutError: If the page never satisfied ``until``.
    """
    from selenium.webdriver.common.action_chains import ActionChains

    for attempt in range(tries):
        actions = ActionChains(driver)
        actions = actions.move_to_element(element) if offset is None else actions.move_to_element_with_offset(element, *offset)
        actions.pause(0.3 + 0.5 * attempt).click().perform()
        try:
            return wait_for(driver, until, timeout=10)
        except TimeoutError:
            if attempt == tries - 1:
                raise
