"""The mesh status page against a running mesh."""
import re
import signal

from playwright.sync_api import expect

from demo_page import join, member, message
from mesh import REGIONS


def edge(page, a, b):
    return page.locator(f'#mesh line.edge[data-link="{"|".join(sorted([a, b]))}"]')


def node(page, region):
    return page.locator(f'#mesh .node[data-region="{region}"]')


def test_status_page_lists_every_region_and_link_and_shows_a_stopped_peers_link_down(split_mesh, pages, screenshots):
    # Readers in two regions and a backend publishing in the third, so publications cross the links.
    readers = [join(pages, split_mesh, "eu-west", "erin", "status"), join(pages, split_mesh, "ap-south", "arjun", "status")]
    # Publish only once both subscriptions are settled (each page lists the other): a page shows
    # "connected" before its subscription reaches the room's home, and a fresh subscription starts
    # its stream there, so updates sent before it would not be part of the reader's stream.
    expect(member(readers[0], "arjun", "ap-south")).to_have_count(1)
    expect(member(readers[1], "erin", "eu-west")).to_have_count(1)
    for i in range(1, 21):
        split_mesh.api_publish("us-east", "room:status", {"type": "chat", "name": "backend", "region": "us-east",
                                                          "text": f"update {i} of the same story"}, id=f"s{i}")
    for reader in readers:
        expect(message(reader, "update 20 of the same story")).to_have_count(1)
    page = pages.open(f"{split_mesh.url('eu-west')}/status.html?topic=room:status")
    expect(page.locator("#mesh .node")).to_have_count(3)
    expect(page.locator("#mesh line.edge")).to_have_count(3)
    for region in REGIONS:
        expect(node(page, region)).to_have_attribute("data-reachable", "true")
    expect(node(page, "eu-west")).to_have_attribute("data-self", "true")
    for a, b in [("eu-west", "us-east"), ("eu-west", "ap-south"), ("us-east", "ap-south")]:
        expect(edge(page, a, b)).to_have_attribute("data-state", "up")
    # One row per direction of each link, each reported by its sender.
    expect(page.locator("#links tbody tr")).to_have_count(6)
    expect(page.locator('#links tbody tr[data-state="up"]')).to_have_count(6)
    # Each up link shows its queue: messages waiting / bytes / batches not yet credited.
    expect(page.locator('#links tbody tr[data-state="up"] td.queue')).to_have_count(6)
    expect(page.locator('#links tbody tr[data-state="up"] td.queue').first).to_have_text(re.compile(r"^[0-9,]+ / [0-9,]+ B / [0-9,]+$"))
    expect(page.locator("#regions tbody tr")).to_have_count(3)
    expect(page.locator("#topic-info pre")).to_contain_text("failover order")
    expect(page.locator("#topic-info pre")).to_contain_text("offset 20")
    expect(page.locator('#regions tbody tr[data-region="eu-west"] td').nth(2)).to_have_text("1")
    expect(page.locator("#badge-text")).to_contain_text("3 of 3 links up")
    page.screenshot(path=str(screenshots / "status.png"), full_page=True)

    split_mesh.stop("us-east", signal.SIGTERM)
    expect(edge(page, "eu-west", "us-east")).to_have_attribute("data-state", "down", timeout=10_000)
    expect(edge(page, "us-east", "ap-south")).to_have_attribute("data-state", "down")
    expect(edge(page, "eu-west", "ap-south")).to_have_attribute("data-state", "up")
    expect(node(page, "us-east")).to_have_attribute("data-reachable", "false")
    expect(page.locator('#links tbody tr[data-from="eu-west"][data-link="eu-west|us-east"]')).to_have_attribute("data-state", "down")
    expect(page.locator("#badge-text")).to_contain_text("1 of 3 links up")
