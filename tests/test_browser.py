"""JupyterLab in headless Chromium: run 03_prompt_engineering, edit PromptLab's classes.

Needs Debian's chromium at /usr/bin/chromium (`make test` installs it) and Playwright's Python
client, which drives that browser: Playwright's own browser download is never used. The screenshot
is kept in artifacts/promptlab.png.
"""

import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"
NOTEBOOK = "03_prompt_engineering.ipynb"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PERCENT = re.compile(r"^\d+\.\d%$")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on 127.0.0.1 over a copy of the notebook (the original stays as is)."""
    folder = tmp_path_factory.mktemp("lab")
    shutil.copy(ROOT / "notebooks" / NOTEBOOK, folder)
    port, token = free_port(), secrets.token_hex(16)
    log = open(folder / "jupyter.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1"]
        + [f"--port={port}", f"--ServerApp.token={token}", f"--ServerApp.root_dir={folder}"],
        cwd=folder,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                log.flush()
                started = (folder / "jupyter.log").read_text()
                raise RuntimeError(f"JupyterLab did not start: {started}") from None
            time.sleep(0.5)
    yield f"{url}/lab/tree/{NOTEBOOK}?token={token}"
    server.terminate()
    server.wait(timeout=30)
    log.close()


def bar_texts(page: Page) -> list[str]:
    """PromptLab's probability bars as 'class percentage' strings, in display order."""
    rows = page.locator(".widget-hbox:has(.widget-hprogress)")
    return [" ".join(row.inner_text().split()) for row in rows.all()]


def test_promptlab_reacts_to_a_class_name_change(lab):
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", args=CHROMIUM_FLAGS
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(lab)
        page.locator(".jp-Notebook").wait_for(timeout=120_000)
        expect(page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']")).to_have_count(
            1, timeout=120_000
        )
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile("^Run$")).click()
        page.locator(".lm-Menu-itemLabel", has_text=re.compile("^Run All Cells$")).click()

        classes = page.locator(".widget-textarea:has(label:text-is('classes')) textarea").first
        classes.wait_for(state="attached", timeout=600_000)
        classes.scroll_into_view_if_needed()
        expect(page.locator(".widget-hprogress").first).to_be_visible(timeout=120_000)
        before = bar_texts(page)
        old_names = classes.input_value().splitlines()

        classes.fill("\n".join([*old_names[:-1], "purple zebra"]))
        classes.press("Tab")
        expect(page.locator(".widget-label", has_text="purple zebra")).to_be_visible(timeout=60_000)
        after = bar_texts(page)
        page.screenshot(path=ARTIFACTS / "promptlab.png", full_page=False)
        browser.close()

    assert len(before) == len(after) == len(old_names)
    assert any("purple zebra" in row for row in after)
    assert not any("purple zebra" in row for row in before)
    assert all(PERCENT.match(row.split()[-1]) for row in before + after)
    assert before != after
