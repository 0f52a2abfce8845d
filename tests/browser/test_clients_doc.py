"""The JavaScript example in docs/CLIENTS.md works as written, against a real mesh."""
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from playwright.sync_api import expect

from demo_page import expect_once, join, send
from mesh import REPO, free_port, http_json


def test_the_documented_javascript_chat_page_works(mesh, pages):
    doc = (REPO / "docs" / "CLIENTS.md").read_text()
    html = re.search(r"```html\n(.*?)```", doc, re.S).group(1)
    # The example talks to the relay of `tern up Topology/local.yaml`; this mesh runs on other ports.
    eu, us = mesh.url("eu-west"), mesh.url("us-east")
    html = html.replace("http://127.0.0.1:7101", eu).replace("ws://127.0.0.1:7101", eu.replace("http", "ws"))
    room = f"lobby-{uuid.uuid4().hex[:6]}"
    html = html.replace("'room:lobby'", f"'room:{room}'")
    # The page is served by "your application", on another loopback origin, which also hands out the token.
    token = http_json(f"{eu}/dev/token?user=ada")["token"]
    files = {"/chat.html": ("text/html; charset=utf-8", html), "/tern-token": ("text/plain", token)}

    class App(BaseHTTPRequestHandler):
        def do_GET(self):
            content_type, body = files.get(self.path, ("text/plain", None))
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Type", content_type)
            self.end_headers()
            self.wfile.write((body or "not found").encode())

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), App)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        page = pages.open(f"http://127.0.0.1:{server.server_address[1]}/chat.html")
        check_chat_page(page, pages, mesh, room)
    finally:
        server.shutdown()
        server.server_close()


def check_chat_page(page, pages, mesh, room):
    expect(page.locator("#status")).to_have_text("connected over websocket")
    expect(page.locator("#members li")).to_have_text(["ada (eu-west)"])

    # Someone in the demo room of another region sees ada's message and answers.
    bob = join(pages, mesh, "us-east", "bob", room)
    expect(page.locator("#members li")).to_have_count(2)
    page.fill("#text", "hello from the documented page")
    page.press("#text", "Enter")
    expect_once(bob, "hello from the documented page")
    send(bob, "hi ada")
    expect(page.locator("#messages li", has_text="bob: hi ada")).to_have_count(1)
