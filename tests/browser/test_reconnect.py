"""A page whose region's relay is killed and started again catches up by itself."""
import signal
import time
import uuid

from playwright.sync_api import expect

from demo_page import expect_once, join, member, message, send


def room_not_homed_in(mesh, region):
    """A room whose home is another region, so killing `region` loses no stream."""
    for i in range(100):
        room = f"restart-{uuid.uuid4().hex[:6]}-{i}"
        if mesh.home_of(f"room:{room}") != region:
            return room
    raise AssertionError(f"no room found with a home other than {region}")


def test_page_reconnects_after_its_relay_is_killed_and_shows_what_it_missed_once(split_mesh, pages):
    room = room_not_homed_in(split_mesh, "us-east")
    alice = join(pages, split_mesh, "eu-west", "alice", room)
    bob = join(pages, split_mesh, "us-east", "bob", room)
    # "connected" is the connection; the subscription is settled once each page lists the other.
    # A relay announces a member only after the home has placed its subscription in the stream,
    # so a message sent after that reaches bob; one sent before may be before his stream starts.
    expect(member(alice, "bob", "us-east")).to_have_count(1)
    expect(member(bob, "alice", "eu-west")).to_have_count(1)
    before = "before the crash"
    send(alice, before)
    expect_once(bob, before)

    split_mesh.stop("us-east", signal.SIGKILL)
    expect(bob.locator("#badge")).to_have_attribute("data-state", "reconnecting")
    missed = [f"while us-east was down {i} {uuid.uuid4().hex[:4]}" for i in range(3)]
    for text in missed:
        send(alice, text)
        expect(message(alice, text)).to_have_count(1)

    split_mesh.start("us-east")
    expect(bob.locator("#badge")).to_have_attribute("data-state", "connected", timeout=20_000)
    resync = bob.locator(".notice.resync")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if resync.count() > 0 or all(message(bob, t).count() == 1 for t in missed):
            break
        time.sleep(0.1)
    time.sleep(0.5)
    counts = [message(bob, t).count() for t in missed]
    print(f"after the restart: missed messages shown {counts} times; resync notice: {resync.all_inner_texts()}")
    if resync.count() == 0:
        # History covered the gap: every message published meanwhile is shown exactly once.
        assert counts == [1, 1, 1], f"missed messages shown {counts} times and no resync notice"
    else:
        # History could not cover it: the page says so, and still shows nothing twice.
        assert all(c <= 1 for c in counts), counts
    expect(message(bob, before)).to_have_count(1)

    # And the room is live again both ways.
    after = f"after the restart {uuid.uuid4().hex[:4]}"
    send(alice, after)
    expect_once(bob, after)
    back = f"bob is back {uuid.uuid4().hex[:4]}"
    send(bob, back)
    expect_once(alice, back)
