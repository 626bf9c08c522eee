"""Headless Debian chromium, driven by Playwright (no browser download)."""

from __future__ import annotations

import contextlib
import time

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox",  # tests run as root
    "--disable-gpu",
    "--disable-background-networking",  # the network is closed; don't let chromium reach for it
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@contextlib.contextmanager
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield instance
        finally:
            instance.close()


def send_chat(page, message: str) -> None:
    box = page.locator("#chat-input textarea")
    box.fill(message)
    box.press("Enter")


def watch_reply(page, timeout: float = 120, settle: float = 2.0) -> list[str]:
    """Poll the newest bot message until it stops changing; return every distinct text seen."""
    page.wait_for_selector("[data-testid='bot']", timeout=timeout * 1000)
    bot = page.locator("[data-testid='bot']").last
    seen: list[str] = []
    changed = time.monotonic()
    deadline = changed + timeout
    while time.monotonic() < deadline:
        text = bot.inner_text().strip()
        if text and (not seen or text != seen[-1]):
            seen.append(text)
            changed = time.monotonic()
        busy = page.locator("[data-testid='stop-button']").count() > 0
        if seen and not busy and time.monotonic() - changed > settle:
            break
        time.sleep(0.05)
    return seen
