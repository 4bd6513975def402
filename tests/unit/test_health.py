"""python -m hfl.health: the light gRPC health check that container health checks run."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from hfl.health import HealthConfigError, check, listen_port, main, tls_files


@pytest.fixture
def health_server() -> Iterator[tuple[str, health.HealthServicer]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        server.stop(None)


@pytest.mark.parametrize("listen, port", [("0.0.0.0:50051", 50051), ("[::]:7000", 7000), ("127.0.0.1:1", 1)])
def test_listen_port(listen: str, port: int) -> None:
    assert listen_port(listen) == port


@pytest.mark.parametrize("listen", ["50051", "host:", ":50051", "host:port", "host:0", "host:70000"])
def test_listen_port_refuses_nonsense(listen: str) -> None:
    with pytest.raises(HealthConfigError, match="HFL_LISTEN"):
        listen_port(listen)


def test_serving_and_not_serving(health_server: tuple[str, health.HealthServicer]) -> None:
    address, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert check(address, 3.0, None) == (True, f"{address}: SERVING")
    assert main(["--address", address]) == 0
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    ok, line = check(address, 3.0, None)
    assert not ok and line.endswith("NOT_SERVING")
    assert main(["--address", address]) == 1


def test_unreachable_port_fails() -> None:
    ok, line = check("127.0.0.1:1", 0.5, None)
    assert not ok and "not reachable" in line
    assert main([], env={"HFL_LISTEN": "0.0.0.0:1", "HFL_TLS": "false"}) == 1


def test_bad_configuration_is_a_failed_check_with_a_plain_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([], env={"HFL_LISTEN": "nonsense"}) == 1
    assert "HFL_LISTEN must look like HOST:PORT" in capsys.readouterr().out
    assert main(["--timeout", "0"], env={}) == 1


def test_tls_files_only_when_tls_is_on_and_the_node_has_a_certificate(tmp_path: Path) -> None:
    env = {"HFL_STATE_DIR": str(tmp_path)}
    assert tls_files(env) is None  # still enrolling: no certificate yet
    tls = tmp_path / "tls"
    tls.mkdir()
    for name in ("ca.pem", "key.pem", "cert.pem"):
        (tls / name).write_bytes(name.encode())
    assert tls_files(env) == (b"ca.pem", b"key.pem", b"cert.pem")
    assert tls_files({**env, "HFL_TLS": "false"}) is None
    assert tls_files({**env, "HFL_TLS": "0"}) is None
    assert tls_files({}, cert_dir=str(tls)) == (b"ca.pem", b"key.pem", b"cert.pem")


def _metrics_server(text: str) -> tuple[Any, int]:
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = text.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            return None

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


@pytest.mark.parametrize(
    ("text", "ok", "words"),
    [
        ('hfl_up{role="facility"} 1.0\nhfl_facility_fog_connections 2.0\n', True, "connected to 2"),
        ('hfl_up{role="facility"} 1.0\nhfl_facility_fog_connections 0\n', False, "not connected to any"),
        ('hfl_up{role="facility"} 0.0\nhfl_facility_fog_connections 0.0\n', False, "still starting"),
    ],
)
def test_a_facility_is_healthy_when_it_is_up_and_connected_to_a_fog(
    text: str, ok: bool, words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    server, port = _metrics_server(text)
    try:
        assert main(["--facility"], env={"HFL_METRICS_PORT": str(port)}) == (0 if ok else 1)
        assert words in capsys.readouterr().out
    finally:
        server.shutdown()


def test_a_facility_whose_metrics_do_not_answer_is_not_healthy(capsys: pytest.CaptureFixture[str]) -> None:
    server, port = _metrics_server("")
    server.shutdown()
    server.server_close()
    assert main(["--facility", "--timeout", "1"], env={"HFL_METRICS_PORT": str(port)}) == 1
    assert "do not answer" in capsys.readouterr().out
    assert main(["--facility"], env={"HFL_METRICS_PORT": "nine"}) == 1
