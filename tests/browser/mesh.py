"""A real Tern mesh on loopback for browser tests: `tern up` processes on free ports."""
import json
import os
import random
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TERN = Path(os.environ.get("TERN_BIN", REPO / ".build" / "debug" / "tern"))
REGIONS = ["eu-west", "us-east", "ap-south"]


def free_port():
    """A free loopback port below the kernel's ephemeral range, so nothing else takes it meanwhile."""
    for _ in range(200):
        port = random.randint(20000, 29999)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError("no free loopback port between 20000 and 29999")


def topology_yaml(client_ports, link_ports):
    regions = "\n".join(
        f"  - name: {r}\n    client: 127.0.0.1:{client_ports[r]}\n    link: 127.0.0.1:{link_ports[r]}" for r in REGIONS
    )
    return f"""# Written by tests/browser/mesh.py: three regions on free loopback ports.
mesh: browser-test
regions:
{regions}
links:
  - between: [eu-west, us-east]
    latency_ms: 80
    plaintext: true
  - between: [eu-west, ap-south]
    latency_ms: 120
    plaintext: true
  - between: [us-east, ap-south]
    latency_ms: 200
    plaintext: true
namespaces:
  room: {{presence: true, join_leave: true, history_size: 100, history_ttl: 300s, anonymous: false}}
  news: {{presence: false, history_size: 100, history_ttl: 300s, anonymous: true, client_publish: false}}
limits:
  publish_rate: 50
  publish_burst: 100
mesh_tuning:
  reconnect_min: 50ms
  reconnect_max: 500ms
auth:
  jwt:
    hs256_secret: {{env: TERN_JWT_SECRET}}
  api_key: {{env: TERN_API_KEY}}
"""


def http_json(url, data=None, headers=None, timeout=5):
    """GET (or POST `data`) and decode the JSON answer; raises on HTTP errors."""
    body = None if data is None else json.dumps(data).encode()
    request = urllib.request.Request(url, data=body, headers=headers or {}, method="GET" if data is None else "POST")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


class Mesh:
    """Three regions run by `tern up`: all in one process, or one process per region so one can be killed."""

    def __init__(self, split):
        self.split = split
        self.dir = Path(tempfile.mkdtemp(prefix="tern-browser-"))
        self.client_ports = {r: free_port() for r in REGIONS}
        link_ports = {r: free_port() for r in REGIONS}
        self.topology = self.dir / "mesh.yaml"
        self.topology.write_text(topology_yaml(self.client_ports, link_ports))
        self.env = dict(os.environ)
        self.env["TERN_JWT_SECRET"] = os.urandom(24).hex()
        self.env["TERN_API_KEY"] = os.urandom(16).hex()
        self.processes = {}  # name -> Popen; the name is a region, or "all"
        self.logs = []

    def url(self, region):
        return f"http://127.0.0.1:{self.client_ports[region]}"

    def start(self, region=None):
        """Starts every region (one process) or, in a split mesh, one region; waits until it answers."""
        name = region or "all"
        args = [str(TERN), "up", str(self.topology)] + (["--region", region] if region else [])
        log = self.dir / f"{name}-{len(self.logs)}.log"
        self.logs.append(log)
        # Started from the repository root, so the relays find clients/js and web/ as `tern up` does for a person.
        self.processes[name] = subprocess.Popen(
            args, cwd=REPO, env=self.env, stdout=log.open("w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        for r in [region] if region else REGIONS:
            self.wait_healthy(r, name)

    def start_all(self):
        if self.split:
            for r in REGIONS:
                self.start(r)
        else:
            self.start()
        self.wait_links()

    def wait_healthy(self, region, name, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.processes[name].poll() is not None:
                raise RuntimeError(f"tern up for {name} exited with {self.processes[name].returncode}:\n{self.log_tail()}")
            try:
                if http_json(self.url(region) + "/health", timeout=1).get("status") == "ok":
                    return
            except (urllib.error.URLError, OSError, ValueError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{region} did not answer /health within {timeout}s:\n{self.log_tail()}")

    def own_links(self, region):
        """This region's own links and their state, from its /status."""
        status = http_json(self.url(region) + "/status", timeout=2)
        return {l["peer"]: l["state"] for l in status["links"] if l.get("own")}

    def wait_links(self, timeout=20, regions=None):
        """Waits until every running region reports all its links up."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if all(set(self.own_links(r).values()) == {"up"} for r in regions or REGIONS):
                    return
            except (urllib.error.URLError, OSError, ValueError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"links did not all come up within {timeout}s:\n{self.log_tail()}")

    def stop(self, region, sig=signal.SIGTERM, timeout=15):
        """Stops one region of a split mesh with `sig` and waits for its process to end."""
        process = self.processes.pop(region)
        process.send_signal(sig)
        process.wait(timeout=timeout)

    def api_publish(self, region, topic, data, id=""):
        return http_json(self.url(region) + "/api/publish", {"topic": topic, "id": id, "data": data},
                         headers={"X-API-Key": self.env["TERN_API_KEY"], "Content-Type": "application/json"})

    def home_of(self, topic):
        return http_json(f"{self.url(REGIONS[0])}/status?topic={urllib.request.quote(topic)}")["topic"]["home"]

    def log_tail(self, lines=40):
        out = []
        for log in self.logs:
            if log.exists():
                text = log.read_text(errors="replace").splitlines()
                out.append(f"--- {log.name}\n" + "\n".join(text[-lines:]))
        return "\n".join(out)

    def close(self):
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()
