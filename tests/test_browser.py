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
PERCENT = re.compile(r"\d+\.\d%$")


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


def bar_texts(page: Page, count: int) -> list[str]:
    """PromptLab's `count` probability bars as 'class percentage' strings, once all are drawn."""
    rows = page.locator(".widget-hbox:has(> .widget-hprogress)")
    deadline = time.monotonic() + 60
    while True:
        texts = [" ".join(text.split()) for text in rows.all_inner_texts()]  # one snapshot
        drawn = [t for t in texts if PERCENT.search(t)]
        if len(drawn) == len(texts) == count or time.monotonic() > deadline:
            return texts
        time.sleep(0.2)


def test_promptlab_reacts_to_a_class_name_change(lab):
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(lab)
            expect(page.get_by_text(re.compile(r"\| Idle$"))).to_be_visible(timeout=120_000)
            page.locator(".lm-MenuBar-itemLabel", has_text=re.compile("^Run$")).click()
            page.locator(".lm-Menu-itemLabel", has_text=re.compile("^Run All Cells$")).click()

            classes = page.locator(".widget-textarea:has(label:text-is('classes')) textarea")
            classes.first.wait_for(state="attached", timeout=600_000)
            classes.first.scroll_into_view_if_needed()
            expect(page.locator(".widget-hprogress").first).to_be_visible(timeout=120_000)
            old_names = classes.first.input_value().splitlines()
            before = bar_texts(page, len(old_names))

            classes.first.fill("\n".join([*old_names[:-1], "purple zebra"]))
            classes.first.press("Tab")
            changed = page.locator(".widget-label", has_text="purple zebra")
            expect(changed).to_be_visible(timeout=60_000)
            after = bar_texts(page, len(old_names))
            changed.scroll_into_view_if_needed()
        finally:
            page.screenshot(path=ARTIFACTS / "promptlab.png")
            browser.close()

    assert len(before) == len(after) == len(old_names)
    assert any("purple zebra" in row for row in after)
    assert not any("purple zebra" in row for row in before)
    assert all(PERCENT.search(row) for row in before + after)
    assert before != after
