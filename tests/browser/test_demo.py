"""The demo room in two browsers on two regions of a mesh started with `tern up`."""
import re
import uuid

from playwright.sync_api import expect

from demo_page import expect_once, join, member, message, send
from mesh import free_port


def test_two_regions_chat_see_each_other_and_leave(mesh, pages, screenshots):
    room = "lobby"  # a fresh mesh: the room starts empty
    alice = join(pages, mesh, "eu-west", "alice", room)
    bob = join(pages, mesh, "us-east", "bob", room)
    for page in (alice, bob):
        expect(member(page, "alice", "eu-west")).to_have_count(1)
        expect(member(page, "bob", "us-east")).to_have_count(1)
        expect(page.locator("#badge")).to_have_attribute("data-transport", "websocket")
    expect(alice.locator("#badge")).to_have_attribute("data-region", "eu-west")
    expect(bob.locator("#badge")).to_have_attribute("data-region", "us-east")

    hello = "hello from alice in eu-west"
    send(alice, hello)
    expect_once(bob, hello)
    expect_once(alice, hello)
    expect(message(bob, hello).locator(".who")).to_have_text("alice")
    # The path comes from the per-hop trace: the relay alice published to, the room's home, and so
    # on down the fan-out tree to bob's region; the hops line says where it waited.
    home = mesh.home_of("room:lobby")
    route = message(bob, hello).locator(".route")
    expect(route).to_have_text(re.compile(r"^eu-west → .*us-east$"))
    expect(route).to_contain_text(home)
    hops = message(bob, hello).locator(".hops")
    expect(hops).to_contain_text("received in eu-west")
    expect(hops).to_contain_text(f"sequenced in {home}")
    expect(hops).to_contain_text("delivered in us-east")
    expect(hops).to_contain_text(re.compile(r"[+−][0-9.]+ ms shown here$"))

    reply = "hi alice, bob here in us-east"
    send(bob, reply)
    expect_once(alice, reply)
    expect(message(alice, reply).locator(".route")).to_have_text(re.compile(r"^us-east → .*eu-west$"))
    expect(message(alice, reply).locator(".hops")).to_contain_text("delivered in eu-west")

    # Typing indicators are volatile publishes: carol, in alice's region, types and alice sees it.
    carol = join(pages, mesh, "eu-west", "carol", room)
    expect(member(alice, "carol", "eu-west")).to_have_count(1)
    expect(member(bob, "carol", "eu-west")).to_have_count(1)
    carol.locator("#text").press_sequentially("on my way", delay=40)
    expect(alice.locator("#typing")).to_have_text("carol is typing…")
    alice.screenshot(path=str(screenshots / "demo.png"))

    # Closing bob's window makes him leave on alice's page.
    pages.close_page(bob)
    expect(member(alice, "bob", "us-east")).to_have_count(0)
    expect(member(alice, "carol", "eu-west")).to_have_count(1)
    expect(message(alice, hello)).to_have_count(1)


# A network path that refuses WebSocket connections: the page's real WebSocket is pointed at a
# loopback port where nothing listens, so every attempt fails before opening, as behind a proxy that drops upgrades.
BLOCK_WEBSOCKET = """
(() => {
  const Real = window.WebSocket;
  window.blockedWebSockets = 0;
  window.WebSocket = class extends Real {
    constructor(url, protocols) {
      const u = new URL(url, location.href);
      if (u.pathname === '/ws') { u.host = '127.0.0.1:PORT'; window.blockedWebSockets += 1; }
      super(u.toString(), protocols);
    }
  };
})();
"""


def test_blocked_websocket_falls_back_to_sse_and_still_receives_and_publishes(mesh, pages):
    room = f"fallback-{uuid.uuid4().hex[:6]}"
    sam = join(pages, mesh, "eu-west", "sam", room, init_script=BLOCK_WEBSOCKET.replace("PORT", str(free_port())))
    expect(sam.locator("#badge")).to_have_attribute("data-transport", "sse")
    expect(sam.locator("#badge-text")).to_contain_text("Server-Sent Events")
    assert sam.evaluate("window.blockedWebSockets") >= 2
    wendy = join(pages, mesh, "us-east", "wendy", room)
    expect(wendy.locator("#badge")).to_have_attribute("data-transport", "websocket")
    expect(member(wendy, "sam", "eu-west")).to_have_count(1)

    # Over SSE the page publishes with POST /api/publish and its token: the publication carries its user.
    out = f"sent over HTTP {uuid.uuid4().hex[:6]}"
    send(sam, out)
    expect_once(wendy, out)
    expect_once(sam, out)
    expect(message(wendy, out).locator(".who")).to_have_text("sam")

    back = f"received over SSE {uuid.uuid4().hex[:6]}"
    send(wendy, back)
    expect_once(sam, back)
    assert sam.evaluate("window.ternDemo.client.transport") == "sse"


# Counts the EventSources the page creates.
COUNT_EVENT_SOURCES = """
(() => {
  const Real = window.EventSource;
  window.eventSources = 0;
  window.EventSource = class extends Real {
    constructor(url, init) { super(url, init); window.eventSources += 1; }
  };
})();
"""


def test_a_refused_token_over_sse_stops_the_page_with_the_reason(mesh, pages):
    page = pages.open(f"{mesh.url('us-east')}/?transport=sse&token=not-a-token&name=eve&join=1", COUNT_EVENT_SOURCES)
    expect(page.locator("#badge")).to_have_attribute("data-state", "closed")
    expect(page.locator(".notice.error").first).to_contain_text("the token was refused")
    expect(page.locator("#send")).to_be_disabled()
    # The relay said not to come back: the browser's EventSource does not keep retrying.
    page.wait_for_timeout(3000)
    assert page.evaluate("window.eventSources") == 1
