"""Drive deploy/docker-compose.yml from tests: the image, a Compose project, and the federation's gRPC APIs.

Compose itself runs through its command line (`docker compose` when the plugin exists, else
`docker-compose`), the way operators run it; containers, networks and volumes are inspected with the
Docker SDK.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from hfl.proto.v1 import authority_pb2, authority_pb2_grpc, leader_pb2, leader_pb2_grpc
from hfl.rpc.tls import NodeTls, sync_channel

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "deploy" / "docker-compose.yml"
IMAGE = "hfl:latest"
BASE_IMAGE = "hfl-base:bookworm"  # deploy/image/build.sh makes it with debootstrap if BASE_IMAGE is unset
HASH_LABEL = "org.hfl.source-hash"

T = TypeVar("T")


def log(message: str) -> None:
    """Progress on the terminal even under pytest's capture (these steps take minutes)."""
    stream = sys.__stderr__ or sys.stderr
    stream.write(f"[e2e {time.strftime('%H:%M:%S')}] {message}\n")
    stream.flush()


def source_hash() -> str:
    out = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "image" / "source_hash.py"), str(ROOT)],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def ensure_image(client: Any, *, reuse: bool) -> str:
    """Make sure hfl:latest matches this source tree; build it with deploy/image/build.sh otherwise.

    Returns what was done ("reused" or "built in N s"). ``reuse`` (HFL_E2E_REUSE_IMAGE=1) accepts any
    existing hfl:latest, for quick iterations on the tests themselves.
    """
    import docker.errors

    want = source_hash()
    try:
        labels = client.images.get(IMAGE).labels or {}
        if reuse or labels.get(HASH_LABEL) == want:
            return "reused"
        log(f"{IMAGE} was built from other sources; rebuilding it (several minutes)")
    except docker.errors.ImageNotFound:
        log(f"{IMAGE} does not exist yet; building it with deploy/image/build.sh (several minutes)")
    if shutil.which("debootstrap") is None and not os.environ.get("BASE_IMAGE"):
        try:
            client.images.get(BASE_IMAGE)
        except docker.errors.ImageNotFound:
            pytest.skip(
                f"cannot build the image offline: debootstrap is not installed and {BASE_IMAGE} is not "
                "loaded (apt-get install -y debootstrap, or set BASE_IMAGE=python:3.11-slim where a "
                "registry is reachable)"
            )
    t0 = time.monotonic()
    proc = subprocess.run(
        ["bash", str(ROOT / "deploy" / "image" / "build.sh")], cwd=ROOT, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"building the image failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return f"built in {time.monotonic() - t0:.0f} s"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def this_machine() -> str:
    """This machine's own address (the one its default route leaves from): what the sites dial, as they
    would dial a remote institution. Connecting a UDP socket sends nothing."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))
            return str(s.getsockname()[0])
    except OSError:  # no default route: Docker's own bridge address is this machine too
        return "172.17.0.1"


def hospital_site(
    client: Any,
    folder: Path,
    name: str,
    specialty: str,
    authority: str,
    enrol: str,
    trust: dict[str, bytes],
) -> ComposeProject:
    """One hospital's deploy/site/ as its own Compose project, set up as the README tells a hospital IT
    team: ``trust`` (file name -> content: the root certificate, the one-time token, ...) in its trust
    folder, an empty data folder (simulated patients), both readable by the image's user."""
    trust_dir, data = folder / "trust", folder / "data"
    trust_dir.mkdir(parents=True)
    data.mkdir()
    for file, content in trust.items():
        (trust_dir / file).write_bytes(content)
    for p in (trust_dir, data, *trust_dir.iterdir()):
        p.chmod(0o755 if p.is_dir() else 0o644)  # the image's user reads them
    return ComposeProject(
        client,
        {
            "HFL_SITE_NAME": name,
            "HFL_AUTHORITY": authority,
            "HFL_ENROL": enrol,
            "HFL_TRUST_DIR": str(trust_dir),
            "HFL_DATA_DIR": str(data),
            "HFL_DATASET": "synthetic",  # simulated patients: the validators score on the same kind
            "HFL_SPECIALTY": specialty,
            "HFL_METRICS_PORT": str(free_port()),
        },
        compose_file=ROOT / "deploy" / "site" / "docker-compose.yml",
    )


def compose_command() -> list[str]:
    """`docker compose` (plugin) if present, else the standalone `docker-compose`."""
    if (
        shutil.which("docker")
        and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    ):
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise RuntimeError("neither `docker compose` nor `docker-compose` is installed")


def wait_for(
    what: str,
    probe: Callable[[], T | None],
    timeout: float,
    every: float = 2.0,
    on_timeout: Callable[[], str] | None = None,
) -> T:
    """Poll ``probe`` until it returns something other than None/False; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last_error = ""
    while True:
        try:
            value = probe()
            if value is not None and value is not False:
                return value
        except Exception as e:  # services restart, containers come and go: keep polling
            last_error = f" (last error: {type(e).__name__}: {e})"
        if time.monotonic() > deadline:
            extra = on_timeout() if on_timeout else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{last_error}\n{extra}")
        time.sleep(every)


class ComposeProject:
    """One Compose project of deploy/docker-compose.yml (or ``compose_file``) with a unique name."""

    def __init__(
        self, client: Any, env: dict[str, str] | None = None, compose_file: Path | None = None
    ) -> None:
        self.client = client
        self.name = f"hfle2e{uuid.uuid4().hex[:8]}"
        self.file = compose_file or COMPOSE_FILE
        self.cmd = compose_command()
        # The leader's port is published on a free host port (127.0.0.1::50051), not 50051.
        self.env = {"HFL_LEADER_PORT": "127.0.0.1:", **(env or {})}
        self._operator: NodeTls | None = None

    # ---- compose CLI
    def run(self, *args: str, timeout: float = 900) -> str:
        import os

        full = [*self.cmd, "-f", str(self.file), "-p", self.name, *args]
        proc = subprocess.run(
            full, capture_output=True, text=True, timeout=timeout, env={**os.environ, **self.env}
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(full[len(self.cmd) :])} failed (exit {proc.returncode}):\n"
                f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}\n{self.logs()}"
            )
        return proc.stdout + proc.stderr

    def logs(self, *services: str, tail: int = 30) -> str:
        import os

        full = [
            *self.cmd,
            "-f",
            str(self.file),
            "-p",
            self.name,
            "logs",
            "--no-color",
            "--tail",
            str(tail),
            *services,
        ]
        proc = subprocess.run(
            full, capture_output=True, text=True, timeout=120, env={**os.environ, **self.env}
        )
        return "---- recent logs ----\n" + proc.stdout[-8000:]

    # ---- what Docker has for this project
    def containers(self, service: str | None = None, *, all: bool = False) -> list[Any]:
        labels = [f"com.docker.compose.project={self.name}"]
        if service:
            labels.append(f"com.docker.compose.service={service}")
        return list(self.client.containers.list(all=all, filters={"label": labels}))

    def leftovers(self) -> dict[str, list[str]]:
        label = {"label": f"com.docker.compose.project={self.name}"}
        return {
            "containers": [c.name for c in self.client.containers.list(all=True, filters=label)],
            "volumes": [v.name for v in self.client.volumes.list(filters=label)],
            "networks": [n.name for n in self.client.networks.list(filters=label)],
        }

    def ip(self, container: Any) -> str:
        container.reload()
        networks = container.attrs["NetworkSettings"]["Networks"]
        net = networks.get(f"{self.name}_hfl") or next(iter(networks.values()))
        ip = net["IPAddress"]
        if not ip:
            raise RuntimeError(f"{container.name} has no IP address (is it running?)")
        return str(ip)

    def service_ip(self, service: str) -> str:
        (c,) = self.containers(service)
        return self.ip(c)

    @staticmethod
    def node_id(container: Any) -> str:
        """The facility node id inside a container: role-hostname (HFL_NODE_ID is empty)."""
        container.reload()
        return f"facility-{container.attrs['Config']['Hostname']}"

    # ---- the federation's own APIs (gRPC on the project network, mutual TLS with the operator certificate)
    def operator(self) -> NodeTls:
        """The operator certificate the authority writes to its state folder, read from its container."""
        if self._operator is None:
            (authority,) = self.containers("authority")
            files = {}
            for name in ("key.pem", "cert.pem", "ca.pem"):
                code, out = authority.exec_run(["cat", f"/var/lib/hfl/operator/{name}"])
                if code != 0:
                    raise RuntimeError(f"the authority has no operator certificate yet ({name})")
                files[name] = bytes(out)
            self._operator = NodeTls(
                "operator", "operator", None, files["ca.pem"], files["key.pem"], files["cert.pem"]
            )
        return self._operator

    def channel(self, service: str) -> grpc.Channel:
        return sync_channel(f"{self.service_ip(service)}:50051", self.operator())

    def leader_status(self) -> leader_pb2.GetStatusResponse:
        with self.channel("leader") as ch:
            return leader_pb2_grpc.LeaderServiceStub(ch).GetStatus(leader_pb2.GetStatusRequest(), timeout=10)

    def authority_nodes(self) -> authority_pb2.ListNodesResponse:
        with self.channel("authority") as ch:
            return authority_pb2_grpc.AuthorityServiceStub(ch).ListNodes(
                authority_pb2.ListNodesRequest(), timeout=10
            )

    def metrics(self, service: str) -> str:
        with urllib.request.urlopen(f"http://{self.service_ip(service)}:9100/metrics", timeout=10) as r:
            return str(r.read().decode())

    def block_members(self, after_round: int) -> dict[int, list[str]]:
        """Facilities counted in each committed block after ``after_round``, read from the leader's ledger."""
        return self._per_block(after_round, "{m for ms in b.header.extra.get('members', []) for m in ms}")

    def block_fogs(self, after_round: int) -> dict[int, list[str]]:
        """The fogs whose buckets each committed block after ``after_round`` used."""
        return self._per_block(after_round, "set(b.header.extra.get('fogs', []))")

    def block_hashes(self, after_round: int) -> dict[int, list[str]]:
        """The hash of each committed block after ``after_round`` (a list of one)."""
        return self._per_block(after_round, "{b.hash.hex()}")

    def _per_block(self, after_round: int, expression: str) -> dict[int, list[str]]:
        """``expression`` (a set, over block ``b``) for each committed block after ``after_round``."""
        script = (
            "import json, sys\n"
            "from hfl.ledger import LedgerStore\n"
            "with LedgerStore('/var/lib/hfl/ledger.db') as s:\n"
            f"    out = {{b.header.round: sorted({expression})\n"
            f"           for b in s.blocks() if b.header.round > {int(after_round)}}}\n"
            "print(json.dumps(out))\n"
        )
        (leader,) = self.containers("leader")
        code, out = leader.exec_run(["python", "-c", script])
        if code != 0:
            raise RuntimeError(f"reading the ledger failed: {out.decode(errors='replace')[-1000:]}")
        return {int(k): v for k, v in json.loads(out.decode()).items()}
