"""Hospitals on their own networks join a remote federation with outbound connections only.

deploy/central/ runs as one Compose project (authority, leader, 2 fogs, 7 validators) that publishes the
authority's and the fogs' ports on this machine. Three hospital sites each run deploy/site/ as their own
Compose project, so each is on its own Docker network: a site reaches the central tier only through those
published ports (at this machine's address, as it would reach a remote institution), and nothing can
reach into a site. Each site gets the root certificate and its own one-time token, as the README tells a
hospital IT team. Checked: `hfl site check` passes at every site; the federation commits at least 5
rounds with secure aggregation and differential privacy on, with every site in them; no fog can open a
connection to any facility; a site whose network is cut (a firewall rule on this machine drops its
traffic, as an outage would) is left out of the rounds meanwhile and takes part again once it is
restored; the fog serving the sites, stopped mid-run, has its sites moved to the other fog without
losing a committed round.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hfl.health import metric_values
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

pytestmark = [pytest.mark.container, pytest.mark.timeout(1800)]

# Four sites: buckets of 3 or more, so with one site cut off the other three still form a bucket.
SITES = ("st-anna", "north-clinic", "lake-research", "bay-emergency")
SPECIALTIES = ("hospital", "clinic", "research", "emergency")


@pytest.fixture(scope="module")
def docker_client() -> Iterator[Any]:
    import docker

    client = docker.from_env(timeout=120)
    yield client
    client.close()


def _committed(central: ComposeProject) -> int:
    return int(central.leader_status().committed_round)


def test_three_hospitals_join_from_their_own_networks(docker_client: Any, tmp_path: Path) -> None:
    log(f"image: {ensure_image(docker_client, reuse=os.environ.get('HFL_E2E_REUSE_IMAGE') == '1')}")
    host = this_machine()
    ports = {
        k: free_port() for k in ("HFL_AUTHORITY_PORT", "HFL_ENROL_PORT", "HFL_FOG1_PORT", "HFL_FOG2_PORT")
    }
    central = ComposeProject(
        docker_client,
        {
            "HFL_PUBLIC_HOST": host,
            **{k: str(v) for k, v in ports.items()},
            "HFL_MIN_FACILITIES": str(len(SITES)),
            "HFL_ROUND_INTERVAL": "1",
            "HFL_ROUND_TIMEOUT": "20",
            "HFL_VOTE_TIMEOUT": "20",
            "HFL_DP_EPSILON": "8",  # differential privacy on, spread over HFL_DP_ROUNDS (50)
        },
        compose_file=ROOT / "deploy" / "central" / "docker-compose.yml",
    )
    sites: dict[str, ComposeProject] = {}
    try:
        log(f"central tier: {central.name}, published on {host}: {ports}")
        central.run("up", "-d")
        (authority,) = central.containers("authority")
        code, ca = authority.exec_run(["cat", "/var/lib/hfl/tls/ca.pem"])
        assert code == 0, ca
        for name, specialty in zip(SITES, SPECIALTIES, strict=True):
            code, out = authority.exec_run(
                [
                    "hfl",
                    "token",
                    name,
                    "--authority",
                    "authority:50051",
                    "--cert-dir",
                    "/var/lib/hfl/operator",
                ]
            )
            assert code == 0, out
            token = out.decode().splitlines()[1].strip()
            site = hospital_site(
                docker_client,
                tmp_path / name,
                name,
                specialty,
                f"{host}:{ports['HFL_AUTHORITY_PORT']}",
                f"{host}:{ports['HFL_ENROL_PORT']}",
                {"ca.pem": ca, "token": (token + "\n").encode()},
            )
            sites[name] = site
            check = site.run("run", "--rm", "facility", "site", "check")
            assert "This site is ready to join the federation." in check, check
            site.run("up", "-d")
        log("3 sites up; waiting for 5 committed rounds with every site")
        wait_for(
            "5 committed rounds",
            lambda: _committed(central) >= 5,
            timeout=600,
            every=3,
            on_timeout=lambda: central.logs("leader", "fog-1") + sites[SITES[0]].logs(),
        )
        members = central.block_members(0)
        assert any(set(SITES) <= set(m) for m in members.values()), members
        status = central.leader_status()
        log(f"{status.committed_round} rounds committed")
        # differential privacy is on: the authority exports each site's spent budget (what the Grafana
        # privacy panel and the budget alert read), and the budget it is measured against
        (authority,) = central.containers("authority")
        scrape = "import urllib.request as u; print(u.urlopen('http://127.0.0.1:9100/metrics').read().decode())"
        code, raw = authority.exec_run(["python", "-c", scrape])
        assert code == 0, raw
        lines = raw.decode().splitlines()
        spent = {
            name: metric_values(
                "\n".join(x for x in lines if f'facility="{name}"' in x), "hfl_privacy_epsilon_spent"
            )
            for name in SITES
        }
        assert all(v and v[0] > 0 for v in spent.values()), spent
        assert metric_values(raw.decode(), "hfl_privacy_epsilon_budget") == [8.0]
        for site in sites.values():  # after the first start, the check also covers fogs and clock
            out = site.run("run", "--rm", "facility", "site", "check")
            assert "[  ok] fog fog-1" in out and "[  ok] clock" in out, out

        # nothing reaches into a site: no fog can open a connection to a facility
        (fog,) = central.containers("fog-1")
        for name, site in sites.items():
            (facility,) = site.containers("facility")
            ip = site.ip(facility)
            probe = f"import socket; socket.create_connection(('{ip}', 50051), 3)"
            code, out = fog.exec_run(["python", "-c", probe])
            assert code != 0, f"fog-1 reached the facility of {name}: {out[-200:]!r}"

        # a site cut off for a while is left out meanwhile, and takes part again once it is back
        cut = SITES[1]
        subnet = docker_client.networks.get(f"{sites[cut].name}_default").attrs["IPAM"]["Config"][0]["Subnet"]
        # Published ports reach the central tier through Docker's forwarding rules (DOCKER-USER) or its
        # userland proxy on this machine (INPUT): drop the site's packets on both ways in.
        rules = [[chain, "-s", subnet, "-j", "DROP"] for chain in ("DOCKER-USER", "INPUT")]
        for rule in rules:
            subprocess.run(["iptables", "-I", *rule], check=True)
        try:
            start = _committed(central)  # the round under way may still count it: look from the next
            wait_for(
                "2 rounds without the cut site",
                lambda: _committed(central) >= start + 3,
                timeout=300,
                every=2,
                on_timeout=lambda: central.logs("leader", "fog-1"),
            )
            left_out = central.block_members(start + 1)
            assert len(left_out) >= 2 and all(cut not in m for m in left_out.values()), left_out
        finally:
            for rule in rules:
                subprocess.run(["iptables", "-D", *rule], check=True)
        back_from = _committed(central)
        wait_for(
            "the cut site back in a committed round",
            lambda: any(cut in m for m in central.block_members(back_from).values()),
            timeout=300,
            every=3,
            on_timeout=lambda: sites[cut].logs(),
        )
        log(f"{cut} was cut off for rounds {start + 2}..{back_from} (left out) and took part again after")

        # the fog serving the sites stops mid-run: the authority moves them to the other fog, and rounds
        # go on with every site and without losing a committed round
        now = _committed(central)
        serving = central.block_fogs(now - 1)[now]
        assert len(serving) == 1, serving  # 4 sites are one bucket: one fog serves, the other stands by
        (stopped,) = serving
        other = "fog-2" if stopped == "fog-1" else "fog-1"
        committed_before = central.block_hashes(0)
        central.run("stop", "--timeout", "1", stopped)
        stopped_at = _committed(central)
        wait_for(
            f"every site served through {other}",
            lambda: any(
                set(SITES) <= set(central.block_members(stopped_at)[r]) and fogs == [other]
                for r, fogs in central.block_fogs(stopped_at).items()
            ),
            timeout=300,
            every=3,
            on_timeout=lambda: central.logs("leader", "authority", other),
        )
        committed_after = central.block_hashes(0)
        lost = {r: h for r, h in committed_before.items() if committed_after.get(r) != h}
        assert not lost, f"committed rounds lost or rewritten after {stopped} stopped: {sorted(lost)}"
        log(f"{stopped} stopped after round {stopped_at}; its sites moved to {other} and rounds went on")
    finally:
        for site in sites.values():
            try:
                site.run("down", "-v", "--timeout", "5")
            except Exception as e:  # pragma: no cover - best effort
                log(f"cleanup of {site.name} failed: {e}")
        try:
            central.run("down", "-v", "--remove-orphans", "--timeout", "5")
        except Exception as e:  # pragma: no cover - best effort
            log(f"cleanup of {central.name} failed: {e}")
    assert not any(central.leftovers().values())
    assert not any(any(s.leftovers().values()) for s in sites.values())
