"""End to end with containers: deploy/docker-compose.yml brings up a federation that commits rounds, scales,
survives a stopped facility, quarantines a Byzantine one, and `down -v` leaves nothing behind.

Needs a Docker engine (skipped otherwise, see tests/conftest.py). Builds hfl:latest with
deploy/image/build.sh when the image is missing or was built from other sources (label
org.hfl.source-hash); HFL_E2E_REUSE_IMAGE=1 accepts any existing hfl:latest. Typical duration on the
project machine (2 cores, shared): about 5 minutes with an up-to-date image, plus the build (3 to 10 minutes
depending on the load). With HFL_RECORD_RESULTS=1 step timings go to bench/results/containers.json.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from hfl.proto.v1 import leader_pb2, leader_pb2_grpc
from tests.conftest import record_result
from tests.e2e.compose import ComposeProject, ensure_image, log, wait_for

pytestmark = [pytest.mark.container, pytest.mark.timeout(1800)]

FIRST_FACILITIES = 6
SCALED_FACILITIES = 10
# Small, quick rounds so the whole scenario fits in a few minutes on 2 shared cores.
TEST_ENV = {
    "HFL_MIN_FACILITIES": str(FIRST_FACILITIES),
    "HFL_N_PATIENTS": "200",
    "HFL_ROUND_INTERVAL": "1",
    "HFL_ROUND_TIMEOUT": "20",
    "HFL_VOTE_TIMEOUT": "20",
    "HFL_BYZANTINE_ATTACK": "scale",
    "HFL_CONSOLE_PASSWORD": "container test console password",
    "HFL_CONSOLE_PORT": "127.0.0.1:",  # a free port of this machine, as for the leader
}
PROFILES = ("--profile", "byzantine", "--profile", "console")


@pytest.fixture(scope="module")
def docker_client() -> Iterator[Any]:
    import docker

    client = docker.from_env(timeout=120)
    yield client
    client.close()


@pytest.fixture
def project(docker_client: Any) -> Iterator[ComposeProject]:
    timings: dict[str, Any] = {}
    t0 = time.monotonic()
    timings["image"] = ensure_image(docker_client, reuse=os.environ.get("HFL_E2E_REUSE_IMAGE") == "1")
    timings["image_s"] = round(time.monotonic() - t0, 1)
    p = ComposeProject(docker_client, TEST_ENV)
    p.timings = timings  # type: ignore[attr-defined]
    log(f"image: {timings['image']}; compose project {p.name} ({' '.join(p.cmd)})")
    try:
        yield p
    finally:
        if any(p.leftovers().values()):  # the test failed before its own `down -v`
            try:
                p.run(*PROFILES, "down", "-v", "--remove-orphans", "--timeout", "5")
            except Exception as e:  # pragma: no cover - best effort cleanup
                log(f"cleanup of {p.name} failed: {e}")


def console_answers(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=5) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def console_rounds(url: str, password: str) -> int | None:
    """Sign in with headless chromium and read "Rounds committed" on the Training view (None, said in
    the log, when chromium is not installed: then only the console's health was checked)."""
    import shutil

    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        log("chromium is not installed: the console's page is not opened, only its health is checked")
        return None
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1100"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(
        service=webdriver.ChromeService(executable_path="/usr/bin/chromedriver"), options=opts
    )
    try:
        driver.get(url)
        # Streamlit re-draws the page while it loads: an element found a moment ago may be gone, so a
        # stale element means "look again", not a failure.
        wait = WebDriverWait(
            driver, 90, poll_frequency=0.5, ignored_exceptions=(StaleElementReferenceException,)
        )
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, 'input[aria-label="Password"]'))
        driver.find_element(By.CSS_SELECTOR, 'input[aria-label="Password"]').send_keys(password)
        wait.until(
            lambda d: [b for b in d.find_elements(By.TAG_NAME, "button") if b.text.strip() == "Sign in"]
        )
        next(b for b in driver.find_elements(By.TAG_NAME, "button") if b.text.strip() == "Sign in").click()

        def training_option(d: Any) -> Any:
            return next(
                (e for e in d.find_elements(By.CSS_SELECTOR, "label") if e.text.strip() == "Training"), None
            )

        def click_training(d: Any) -> bool:
            option = training_option(d)
            if option is None:
                return False
            option.click()
            return True

        wait.until(click_training)
        wait.until(lambda d: re.search(r"Rounds committed\n(\d+)", d.find_element(By.TAG_NAME, "body").text))
        found = re.search(r"Rounds committed\n(\d+)", driver.find_element(By.TAG_NAME, "body").text)
        assert found is not None
        log(f"the console shows {found.group(1)} committed rounds")
        return int(found.group(1))
    finally:
        driver.quit()


def committed(p: ComposeProject) -> int:
    return int(p.leader_status().committed_round)


def check_mutual_tls(p: ComposeProject) -> None:
    """mTLS is on: no certificate, no service; facilities see only the trust root and the shared facility
    token (never the CA key); fixed nodes used and deleted their one-time tokens; the provisioning
    one-shot finished cleanly; the authority logged each facility enrolled with the shared token."""
    with grpc.insecure_channel(f"{p.service_ip('leader')}:50051") as ch, pytest.raises(grpc.RpcError) as info:
        leader_pb2_grpc.LeaderServiceStub(ch).GetStatus(leader_pb2.GetStatusRequest(), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE, "a connection without a certificate got in"
    facility = p.containers("facility")[0]
    code, out = facility.exec_run(["ls", "/etc/hfl/trust"])
    # the root certificate, the authority's pinned signing key and the shared token; never the CA key
    assert code == 0 and sorted(out.decode().split()) == ["authority-key.pub", "ca.pem", "facility-token"]
    code, _ = facility.exec_run(["sh", "-c", "echo x > /etc/hfl/trust/facility-token"])
    assert code != 0, "the facility trust volume must be read-only"
    # hospitals only dial out: no fog can open a connection to any facility's gRPC port
    (fog,) = p.containers("fog-1")
    for c in p.containers("facility"):
        c.reload()
        ip = next(iter(c.attrs["NetworkSettings"]["Networks"].values()))["IPAddress"]
        probe = f"import socket; socket.create_connection(('{ip}', 50051), 3)"
        code, out = fog.exec_run(["python", "-c", probe])
        assert code != 0 and b"refused" in out.lower(), f"fog-1 reached {p.node_id(c)}: {out[-200:]!r}"
    for service in ("leader", "fog-1", "validator-1"):
        (c,) = p.containers(service)
        code, out = c.exec_run(["ls", "/var/lib/hfl/tls"])
        files = sorted(out.decode().split())  # the one-time token is gone once used
        assert code == 0 and files == ["authority-key.pub", "ca.pem", "cert.pem", "key.pem"], service
    (prov,) = p.containers("provision", all=True)
    prov.reload()
    assert prov.attrs["State"]["ExitCode"] == 0
    (authority,) = p.containers("authority")
    logs = authority.logs().decode(errors="replace")
    assert logs.count("enrolled with the shared facility token") >= FIRST_FACILITIES


def test_compose_federation(project: ComposeProject) -> None:
    p = project
    timings: dict[str, Any] = p.timings  # type: ignore[attr-defined]
    started = time.monotonic()

    def mark(step: str, since: float) -> None:
        timings[step] = round(time.monotonic() - since, 1)
        log(f"{step}: {timings[step]} s")

    # 1. up with 6 facilities; compose waits for the health checks (authority, fogs, validators) ------------
    t = time.monotonic()
    log(f"docker compose up -d --scale facility={FIRST_FACILITIES}")
    p.run("up", "-d", "--scale", f"facility={FIRST_FACILITIES}")
    mark("up_s", t)
    assert len(p.containers("facility")) == FIRST_FACILITIES
    for service in ("authority", "leader", "fog-1", "fog-2", "validator-1", "validator-4"):
        assert len(p.containers(service)) == 1, f"{service} is not running"

    # 2. five committed rounds
    wait_for(
        "5 committed rounds",
        lambda: committed(p) >= 5,
        timeout=420,
        every=2,
        on_timeout=lambda: p.logs("leader", "authority", "fog-1"),
    )
    mark("first_5_rounds_s", t)
    first_ids = {p.node_id(c) for c in p.containers("facility")}
    assert len(first_ids) == FIRST_FACILITIES, f"facility node ids are not unique: {first_ids}"
    nodes = p.authority_nodes()
    facilities = [n for n in nodes.nodes if n.role == "facility"]
    assert {n.node_id for n in facilities} == first_ids
    assert {n.address for n in facilities} == {""}, "facilities listen on no port, so they advertise none"
    assert {n.specialty for n in facilities} >= {"hospital", "clinic", "research", "emergency"}, (
        "the authority assigns specialties round-robin"
    )
    check_mutual_tls(p)

    # 2b. the console (profile console) answers and shows the committed rounds, signed in as an operator
    t = time.monotonic()
    p.run("--profile", "console", "up", "-d", "--no-deps", "console")
    url = f"http://{p.service_ip('console')}:8501"
    wait_for(
        "the console to answer",
        lambda: console_answers(url),
        timeout=180,
        every=2,
        on_timeout=lambda: p.logs("console"),
    )
    shown = console_rounds(url, TEST_ENV["HFL_CONSOLE_PASSWORD"])
    if shown is not None:
        assert shown >= 5, f"the console shows {shown} committed rounds"
    (console,) = p.containers("console")
    code, out = console.exec_run(["ls", "/etc/hfl/operator"])
    assert code == 0 and sorted(out.decode().split()) == ["ca.pem", "cert.pem", "key.pem"], "never the CA key"
    mark("console_s", t)

    # 3. scale to 10: the new facilities enrol and take part in committed rounds
    t = time.monotonic()
    log(f"docker compose up -d --scale facility={SCALED_FACILITIES}")
    scale_round = committed(p)
    p.run("up", "-d", "--no-recreate", "--scale", f"facility={SCALED_FACILITIES}")
    all_ids = {p.node_id(c) for c in p.containers("facility")}
    new_ids = all_ids - first_ids
    assert len(new_ids) == SCALED_FACILITIES - FIRST_FACILITIES

    def new_ones_took_part() -> bool:
        seen = {m for members in p.block_members(scale_round).values() for m in members}
        return new_ids <= seen

    wait_for(
        "the 4 new facilities in a committed block",
        new_ones_took_part,
        timeout=300,
        every=3,
        on_timeout=lambda: p.logs("leader", "authority"),
    )
    mark("scale_to_10_s", t)

    # 4. one Byzantine facility (HFL_BYZANTINE=scale) is quarantined
    t = time.monotonic()
    log("adding the Byzantine facility (profile byzantine)")
    p.run("--profile", "byzantine", "up", "-d", "--no-deps", "facility-byzantine")
    (byz,) = p.containers("facility-byzantine")
    byz_id = p.node_id(byz)
    assert byz.attrs["Config"]["Env"] and "HFL_BYZANTINE=scale" in byz.attrs["Config"]["Env"]
    wait_for(
        f"{byz_id} to be quarantined",
        lambda: byz_id in p.authority_nodes().quarantined,
        timeout=420,
        every=3,
        on_timeout=lambda: p.logs("leader", "authority"),
    )
    mark("byzantine_quarantined_s", t)
    assert not set(p.authority_nodes().quarantined) & all_ids, "an honest facility was quarantined"
    metric = re.search(
        rf'^hfl_quarantined\{{facility="{re.escape(byz_id)}"\}} (\S+)$', p.metrics("authority"), re.MULTILINE
    )
    assert metric and float(metric.group(1)) == 1.0, (
        "the authority's hfl_quarantined metric shows the quarantine"
    )

    # 5. stop one facility mid-round: that round still commits, and so do the next ones
    t = time.monotonic()

    def running_round() -> int | None:
        s = p.leader_status()
        m = re.match(r"running round (\d+)", s.state)
        return int(m.group(1)) if m and int(m.group(1)) == s.committed_round + 1 else None

    victim = next(c for c in p.containers("facility") if p.node_id(c) in first_ids)
    r = wait_for("a round in progress", running_round, timeout=120, every=0.2)
    log(f"stopping {victim.name} ({p.node_id(victim)}) during round {r}")
    victim.stop(timeout=1)
    wait_for(
        f"round {r} to commit without {victim.name}",
        lambda: committed(p) >= r,
        timeout=300,
        every=2,
        on_timeout=lambda: p.logs("leader", "fog-1", "fog-2"),
    )
    wait_for(
        f"round {r + 1} to commit",
        lambda: committed(p) >= r + 1,
        timeout=300,
        every=2,
        on_timeout=lambda: p.logs("leader", "fog-1", "fog-2"),
    )
    mark("round_with_stopped_facility_s", t)
    assert p.leader_status().head_hash

    # 6. down -v leaves no container, volume or network of the project
    t = time.monotonic()
    p.run(*PROFILES, "down", "-v", "--remove-orphans", "--timeout", "10")
    mark("down_s", t)
    assert p.leftovers() == {"containers": [], "volumes": [], "networks": []}

    timings["total_s"] = round(time.monotonic() - started, 1)
    timings["committed_rounds_at_end"] = r + 1
    timings["machine"] = f"{os.cpu_count()} cores, shared with other jobs (timings under contention)"
    record_result("containers.json", timings)
    log(f"done: {timings}")
