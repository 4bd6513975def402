"""A light gRPC health check for container health checks: ``python -m hfl.health``.

Docker runs the health check of every container every few seconds, so it must be cheap: this module
imports only grpc and the standard health service (about 0.1 s of CPU), not the whole of hfl (``hfl health``
loads the settings, numpy and the TLS tools: about 0.5 s). It answers the same question as ``hfl health``:
is the service on this container's own port SERVING?

Configuration comes from the same environment variables as the service:

* ``HFL_LISTEN`` (default ``0.0.0.0:50051``): the port to check, on 127.0.0.1;
* ``HFL_TLS`` and ``HFL_STATE_DIR``: with TLS on (the default) and this node's certificate present in
  ``$HFL_STATE_DIR/tls/{key.pem,cert.pem,ca.pem}``, the check uses mutual TLS with that certificate.
  While the node has no certificate yet it is still enrolling, and the plain check fails, as it should.

A facility listens on no port (it dials out to its fogs), so ``--facility`` asks its local metrics
endpoint instead (``HFL_METRICS_PORT``, default 9100, on 127.0.0.1): healthy when it is up and holds a
connection to at least one fog.

Exit status 0 when SERVING, 1 otherwise (not reachable, NOT_SERVING, bad configuration), with one line.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

DEFAULT_LISTEN = "0.0.0.0:50051"
DEFAULT_STATE_DIR = "/var/lib/hfl"
FALSE_WORDS = frozenset({"0", "false", "no", "off"})


class HealthConfigError(ValueError):
    """The environment does not say which port to check."""


def listen_port(listen: str) -> int:
    """The port of HOST:PORT, with a plain error for anything else."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise HealthConfigError(
            f"HFL_LISTEN must look like HOST:PORT (for example 0.0.0.0:50051), got {listen!r}"
        )
    return int(port)


def tls_files(env: Mapping[str, str], cert_dir: str | None = None) -> tuple[bytes, bytes, bytes] | None:
    """(ca, key, cert) PEM bytes when TLS is on and this node holds a certificate, else None."""
    if env.get("HFL_TLS", "true").strip().lower() in FALSE_WORDS:
        return None
    folder = Path(cert_dir) if cert_dir else Path(env.get("HFL_STATE_DIR") or DEFAULT_STATE_DIR) / "tls"
    paths = [folder / name for name in ("ca.pem", "key.pem", "cert.pem")]
    if not all(p.is_file() for p in paths):
        return None
    ca, key, cert = (p.read_bytes() for p in paths)
    return ca, key, cert


def check(address: str, timeout: float, tls: tuple[bytes, bytes, bytes] | None) -> tuple[bool, str]:
    """Ask the standard gRPC health service at ``address``; returns (serving, one-line description)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if tls is None:
        channel = grpc.insecure_channel(address)
    else:
        ca, key, cert = tls
        creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
        channel = grpc.secure_channel(address, creds)
    try:
        with channel:
            resp = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout
            )
    except grpc.RpcError as e:
        code = e.code().name if hasattr(e, "code") else "error"
        return False, f"{address}: not reachable ({code})"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    return resp.status == health_pb2.HealthCheckResponse.SERVING, f"{address}: {status}"


def metric_values(text: str, name: str) -> list[float]:
    """The values of one metric in Prometheus' text format (any labels)."""
    out = []
    for line in text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
            try:
                out.append(float(line.rsplit(" ", 1)[1]))
            except ValueError:
                continue
    return out


def check_facility(metrics_port: int, timeout: float) -> tuple[bool, str]:
    """A facility is healthy when it is up and connected to at least one fog (read from its own
    metrics, which never leave its machine)."""
    import urllib.request

    url = f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            text = resp.read().decode()
    except OSError as e:
        return False, f"facility: its metrics at {url} do not answer ({e})"
    up = sum(metric_values(text, "hfl_up"))
    fogs = sum(metric_values(text, "hfl_facility_fog_connections"))
    if up < 1:
        return False, "facility: still starting (enrolling, registering or loading its data)"
    if fogs < 1:
        return False, "facility: running, but not connected to any fog (it keeps trying)"
    return True, f"facility: running, connected to {fogs:.0f} fog connection(s)"


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    p = argparse.ArgumentParser(
        prog="python -m hfl.health", description="Exit 0 if this container's hfl service answers SERVING."
    )
    p.add_argument("--address", help="HOST:PORT (default: 127.0.0.1 and the port of HFL_LISTEN)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer (default 3)")
    p.add_argument("--cert-dir", help="folder with key.pem, cert.pem, ca.pem (default: $HFL_STATE_DIR/tls)")
    p.add_argument(
        "--facility",
        action="store_true",
        help="check a facility (it listens on no port): up and connected to a fog, from its local metrics",
    )
    args = p.parse_args(argv)
    if args.facility:
        port = env.get("HFL_METRICS_PORT") or "9100"
        if not port.isdigit():
            print(f"health check: HFL_METRICS_PORT must be a port number, got {port!r}")
            return 1
        ok, line = check_facility(int(port), args.timeout)
        print(line)
        return 0 if ok else 1
    return run(args.address, args.timeout, args.cert_dir, env)


def run(address: str | None, timeout: float, cert_dir: str | None, env: Mapping[str, str]) -> int:
    """The check of ``main`` and ``hfl health``: prints one line, returns the exit status."""
    if not timeout > 0:
        print("health check: --timeout must be a positive number of seconds")
        return 1
    try:
        address = address or f"127.0.0.1:{listen_port(env.get('HFL_LISTEN') or DEFAULT_LISTEN)}"
        tls = tls_files(env, cert_dir)
    except (HealthConfigError, OSError) as e:
        print(f"health check: {e}")
        return 1
    ok, line = check(address, timeout, tls)
    print(line)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
