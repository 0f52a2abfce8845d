"""What the tests do with the demo page, as a person would: join, type, read."""
import re
import time

from playwright.sync_api import expect


def join(pages, mesh, region, name, room, init_script=None):
    """Opens the demo room on `region` as `name` and waits until it is connected."""
    page = pages.open(f"{mesh.url(region)}/?room={room}&name={name}&join=1", init_script)
    expect(page.locator("#badge")).to_have_attribute("data-state", "connected")
    return page


def send(page, text):
    page.fill("#text", text)
    page.press("#text", "Enter")
    expect(page.locator("#text")).to_have_value("")


def message(page, text):
    """The message items whose text is exactly `text`."""
    return page.locator("#messages li.msg").filter(has=page.locator(".text", has_text=re.compile(f"^{re.escape(text)}$")))


def member(page, user, region):
    return page.locator(f'#presence li[data-user="{user}"][data-region="{region}"]')


def expect_once(page, text, settle_s=0.5):
    """Waits for `text` to be shown, then checks a moment later that it is shown once only."""
    expect(message(page, text)).to_have_count(1)
    time.sleep(settle_s)
    expect(message(page, text)).to_have_count(1)
