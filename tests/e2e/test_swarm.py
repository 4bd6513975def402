"""The central tier as a Docker Swarm stack (deploy/central/stack.yml) on a single-node swarm.

As a coordinating institution would: deploy/central/swarm-secrets.sh makes the keys and one-time tokens
and stores them as Docker secrets, `docker stack deploy` starts the authority, leader, 2 fogs and 7
validators all at once (swarm ignores depends_on: each waits for the authority by itself), and three
hospitals join with the site kit (deploy/site/), each as its own Compose project on its own network,
dialling the published ports at this machine's address. Checked: every service of the stack becomes
healthy, the federation commits rounds with every site in them, a validator killed by hand is restarted
by swarm and comes back with the certificate in its volume, and `docker stack rm` plus
`swarm-secrets.sh --remove` leave no service, container, secret or network behind (the test removes the
state volumes, which `docker stack rm` keeps on purpose).

If the swarm is inactive the test initialises it and leaves it again at the end; an active swarm that
already holds hfl secrets (someone's deployment) is not touched.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.compose import (
    ROOT,
    ComposeProject,
    ensure_image,
    free_port,
    hospital_site,
    log,
    this_machine,
    wait_for,
)

pytestmark = [pytest.mark.container, pytest.mark.timeout(1200)]

STACK_FILE = ROOT / "deploy" / "central" / "stack.yml"
SECRETS_SCRIPT = ROOT / "deploy" / "central" / "swarm-secrets.sh"
SERVICES = ("authority", "leader", "fog-1", "fog-2", *(f"validator-{i}" for i in range(1, 8)))
SITES = ("st-anna", "north-clinic", "lake-research")
SPECIALTIES = ("hospital", "clinic", "research")


@pytest.fixture(scope="module")
def docker_client() -> Iterator[Any]:
    import docker

    client = docker.from_env(timeout=120)
    yield client
    client.close()


def _remove_gwbridge(docker_client: Any, timeout: float = 30.0) -> None:
    """Remove the bridge network `docker swarm init` made, as this test found the machine without it.

    Docker detaches its own endpoints from it (the ingress sandbox) a moment after `swarm leave`, and
    refuses the removal with "has active endpoints" until then. Swarm reuses the network on the next
    init, so one still held after the timeout is logged, not failed: it is Docker's, not a leftover of ours.
    """
    import docker.errors

    deadline = time.monotonic() + timeout
    while True:
        try:
            for n in docker_client.networks.list(names=["docker_gwbridge"]):
                n.remove()
            return
        except docker.errors.APIError as e:
            if "active endpoints" not in str(e):
                raise
            if time.monotonic() > deadline:
                log(f"docker_gwbridge kept: Docker still holds an endpoint on it after {timeout:.0f} s ({e})")
                return
            time.sleep(1)


def _docker(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    proc = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"docker {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc.stdout + proc.stderr


@dataclass(frozen=True)
class EndedTask:
    state: str
    error: str
    exit_code: int | None
    logs: str

    @property
    def exited_by_itself(self) -> bool:
        """Our process ended with an error of its own (not stopped by swarm: 0, 143 = SIGTERM, 137 =
        SIGKILL; not a task that swarm failed to start: no exit code)."""
        return self.exit_code not in (None, 0, 137, 143)

    def __str__(self) -> str:
        return f"{self.state} ({self.error}, exit code {self.exit_code}):\n{self.logs}"


class Stack:
    """One deployment of stack.yml under a unique stack name."""

    def __init__(self, client: Any, env: dict[str, str]) -> None:
        self.client = client
        self.name = f"hfle2e{uuid.uuid4().hex[:8]}"
        self.env = env

    def deploy(self) -> str:
        # --resolve-image never: the image is local (built offline), there is no registry to ask.
        return _docker(
            "stack", "deploy", "--resolve-image", "never", "-c", str(STACK_FILE), self.name, env=self.env
        )

    def container(self, service: str) -> Any:
        found = self.client.containers.list(
            filters={"label": f"com.docker.swarm.service.name={self.name}_{service}", "status": "running"}
        )
        if len(found) != 1:
            raise RuntimeError(f"{service}: {len(found)} running containers")
        return found[0]

    def exec(self, service: str, *cmd: str) -> str:
        code, out = self.container(service).exec_run(list(cmd))
        text = out.decode(errors="replace")
        if code != 0:
            raise RuntimeError(f"{' '.join(cmd)} in {service} failed ({code}): {text[-1500:]}")
        return text

    def health(self) -> dict[str, str]:
        out = {}
        for s in SERVICES:
            try:
                c = self.container(s)
                c.reload()
                out[s] = c.attrs["State"].get("Health", {}).get("Status", "none")
            except Exception as e:
                out[s] = str(e)
        return out

    def block_members(self) -> dict[int, list[str]]:
        """Facilities counted in each committed block, read from the leader's ledger."""
        script = (
            "import json\n"
            "from hfl.ledger import LedgerStore\n"
            "with LedgerStore('/var/lib/hfl/ledger.db') as s:\n"
            "    print(json.dumps({b.header.round: sorted({m for ms in b.header.extra.get('members', [])"
            " for m in ms}) for b in s.blocks() if b.header.round > 0}))\n"
        )
        return {int(k): v for k, v in json.loads(self.exec("leader", "python", "-c", script)).items()}

    def logs(self, *services: str) -> str:
        out = []
        for s in services:
            proc = subprocess.run(
                ["docker", "service", "logs", "--no-task-ids", "--tail", "25", f"{self.name}_{s}"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            out.append(f"---- {s} ----\n{proc.stdout[-3000:]}{proc.stderr[-1000:]}")
        return "\n".join(out)

    def ended_tasks(self, service: str) -> list[EndedTask]:
        """The service's tasks that are no longer running: what swarm recorded, and their logs."""
        ended = []
        for t in self.client.services.get(f"{self.name}_{service}").tasks():
            st = t.get("Status", {})
            if st.get("State") == "running":
                continue
            container = st.get("ContainerStatus", {})
            logs = "(no container: the task never started)"
            if cid := container.get("ContainerID"):
                try:
                    logs = self.client.containers.get(cid).logs().decode(errors="replace")[-4000:]
                except Exception as e:  # removed already
                    logs = f"(no logs: {e})"
            ended.append(
                EndedTask(
                    str(st.get("State")),
                    str(st.get("Err") or st.get("Message")),
                    container.get("ExitCode"),
                    logs,
                )
            )
        return ended

    def leftovers(self) -> dict[str, list[str]]:
        label = {"label": f"com.docker.stack.namespace={self.name}"}
        return {
            "services": [s.name for s in self.client.services.list(filters=label)],
            "containers": [c.name for c in self.client.containers.list(all=True, filters=label)],
            "networks": [n.name for n in self.client.networks.list(filters=label)],
            "secrets": [s.name for s in self.client.secrets.list(filters={"label": "org.hfl.central"})],
        }


def test_the_central_tier_runs_as_a_swarm_stack(docker_client: Any, tmp_path: Path) -> None:
    t0 = time.monotonic()
    log(f"image: {ensure_image(docker_client, reuse=os.environ.get('HFL_E2E_REUSE_IMAGE') == '1')}")
    host = this_machine()
    swarm = docker_client.info()["Swarm"]
    we_initialised = swarm["LocalNodeState"] == "inactive"
    had_gwbridge = bool(docker_client.networks.list(names=["docker_gwbridge"]))
    if not we_initialised:
        if swarm["LocalNodeState"] != "active" or not swarm.get("ControlAvailable"):
            pytest.skip(f"this Docker engine is in swarm state {swarm['LocalNodeState']!r}, not a manager")
        if docker_client.secrets.list(filters={"name": "hfl-"}):
            pytest.skip("this swarm already holds hfl secrets (a deployment?); not touching it")
    ports = {
        k: free_port() for k in ("HFL_AUTHORITY_PORT", "HFL_ENROL_PORT", "HFL_FOG1_PORT", "HFL_FOG2_PORT")
    }
    stack = Stack(
        docker_client,
        {
            "HFL_PUBLIC_HOST": host,
            **{k: str(v) for k, v in ports.items()},
            "HFL_MIN_FACILITIES": str(len(SITES)),
            "HFL_ROUND_INTERVAL": "1",
        },
    )
    sites: list[ComposeProject] = []
    keys = tmp_path / "keys"
    try:
        if we_initialised:
            refused = subprocess.run(["bash", str(SECRETS_SCRIPT), str(keys)], capture_output=True, text=True)
            assert refused.returncode == 1 and "not in an active Docker Swarm" in refused.stderr, refused
            assert not keys.exists()
            _docker("swarm", "init", "--advertise-addr", host)
            log(f"initialised a single-node swarm on {host}")
        made = subprocess.run(
            ["bash", str(SECRETS_SCRIPT), str(keys)], capture_output=True, text=True, timeout=300
        )
        assert made.returncode == 0, made.stdout + made.stderr
        assert "hfl-ca.key: created" in made.stdout and "hfl-token-validator-7: created" in made.stdout, (
            made.stdout
        )
        again = subprocess.run(["bash", str(SECRETS_SCRIPT), str(keys)], capture_output=True, text=True)
        assert again.returncode == 0 and "created" not in again.stdout, again.stdout + again.stderr

        log(f"deploying stack {stack.name}, published on {host}: {ports}")
        stack.deploy()
        # Services find each other by name (dnsrr), and a name resolves once its health check has passed.
        wait_for(
            "the authority healthy",
            lambda: stack.health()["authority"] == "healthy",
            timeout=180,
            every=2,
            on_timeout=lambda: stack.logs("authority"),
        )
        token_cmd = ("--authority", "authority:50051", "--cert-dir", "/var/lib/hfl/operator")
        for name, specialty in zip(SITES, SPECIALTIES, strict=True):
            issued = wait_for(
                f"a token for {name}",
                lambda name=name: stack.exec("authority", "hfl", "token", name, *token_cmd),
                timeout=60,
                every=2,
            )
            token = issued.splitlines()[1].strip()
            site = hospital_site(
                docker_client,
                tmp_path / name,
                name,
                specialty,
                f"{host}:{ports['HFL_AUTHORITY_PORT']}",
                f"{host}:{ports['HFL_ENROL_PORT']}",
                {  # what swarm-secrets.sh sets aside for the sites, and the site's own token
                    **{f: (keys / "for-sites" / f).read_bytes() for f in ("ca.pem", "authority-key.pub")},
                    "token": (token + "\n").encode(),
                },
            )
            sites.append(site)
            site.run("up", "-d")
        log("3 sites up; waiting for committed rounds with every site")
        wait_for(
            "3 committed rounds with every site in one",
            lambda: len(m := stack.block_members()) >= 3 and any(set(SITES) <= set(v) for v in m.values()),
            timeout=300,
            every=3,
            on_timeout=lambda: stack.logs("leader", "fog-1", "authority") + sites[0].logs(),
        )
        wait_for(
            "every service of the stack healthy",
            lambda: set(stack.health().values()) == {"healthy"},
            timeout=120,
            every=3,
            on_timeout=lambda: str(stack.health()),
        )
        # started all at once, in whatever order swarm chose: none had to be restarted to get there
        tasks = {s: len(docker_client.services.get(f"{stack.name}_{s}").tasks()) for s in SERVICES}
        # A task that swarm itself could not start or stopped (its network or container set-up failing on a
        # busy machine) is swarm's business and is only logged; a process that exits with an error of its
        # own fails the test, with its logs.
        ended = {s: stack.ended_tasks(s) for s, n in tasks.items() if n > 1}
        crashed = {s: [t for t in ts if t.exited_by_itself] for s, ts in ended.items()}
        assert not any(crashed.values()), (
            f"tasks per service (more than 1: restarted): {tasks}\n"
            + "\n".join(f"---- {s} ----\n" + "\n".join(map(str, ts)) for s, ts in crashed.items() if ts)
        )
        for s, ts in ended.items():
            log(
                f"{s}: swarm replaced a task that did not fail by itself: "
                + "; ".join(str(t)[:300] for t in ts)
            )
        log(f"{len(stack.block_members())} rounds committed; every service healthy, none crashed")

        # restart policy: a validator that dies is started again and keeps its certificate (its volume)
        old = stack.container("validator-3")
        old.kill()
        wait_for(
            "validator-3 restarted by swarm and healthy",
            lambda: (
                stack.container("validator-3").id != old.id and stack.health()["validator-3"] == "healthy"
            ),
            timeout=120,
            every=3,
            on_timeout=lambda: stack.logs("validator-3"),
        )
        restarted = docker_client.containers.get(stack.container("validator-3").id).logs().decode()
        assert "using the certificate in" in restarted, restarted[-2000:]
        committed = len(stack.block_members())
        wait_for(
            "2 more committed rounds",
            lambda: len(stack.block_members()) >= committed + 2,
            timeout=120,
            every=3,
            on_timeout=lambda: stack.logs("leader"),
        )
        rounds = len(stack.block_members())
        log(f"validator-3 restarted; {rounds} rounds committed in {time.monotonic() - t0:.0f} s")
    finally:
        for site in sites:
            try:
                site.run("down", "-v", "--timeout", "5")
            except Exception as e:  # pragma: no cover - best effort
                log(f"cleanup of {site.name} failed: {e}")
        try:
            _docker("stack", "rm", stack.name)
            wait_for(
                "the stack's containers and network to go",
                lambda: not any(v for k, v in stack.leftovers().items() if k != "secrets"),
                timeout=120,
                every=2,
                on_timeout=lambda: str(stack.leftovers()),
            )
        except Exception as e:  # pragma: no cover - best effort
            log(f"docker stack rm {stack.name} failed: {e}")
        removed = subprocess.run(["bash", str(SECRETS_SCRIPT), "--remove"], capture_output=True, text=True)
        if removed.returncode != 0:  # pragma: no cover - best effort
            log(f"swarm-secrets.sh --remove failed: {removed.stdout}{removed.stderr}")
        for v in docker_client.volumes.list(filters={"label": f"com.docker.stack.namespace={stack.name}"}):
            v.remove(force=True)
        try:  # while this machine is still a manager
            left: dict[str, list[str]] = stack.leftovers()
            node = docker_client.nodes.get(docker_client.info()["Swarm"]["NodeID"])
            labels = dict(node.attrs["Spec"].get("Labels") or {})
        except Exception as e:  # e.g. `docker swarm init` itself failed
            left, labels = {"error": [str(e)]}, {}
        if we_initialised:
            _docker("swarm", "leave", "--force")
            if not had_gwbridge:
                _remove_gwbridge(docker_client)
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert not any(left.values()), left
    assert not any(k.startswith("hfl.") for k in labels), labels
    assert not docker_client.volumes.list(filters={"label": f"com.docker.stack.namespace={stack.name}"})
    assert not any(any(s.leftovers().values()) for s in sites)
    if we_initialised:
        assert docker_client.info()["Swarm"]["LocalNodeState"] == "inactive"
