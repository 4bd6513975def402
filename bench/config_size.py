"""Size of the signed round configuration a facility receives: the whole config against its bucket's view.

Builds real configurations with the authority's own code (in memory: no gRPC) for N facilities in
buckets of 4 with 2 fogs and 4 validators, and measures the protobuf bytes and the time to parse and
check the signature, per facility and for all facilities of one round. Writes
bench/results/config_size.json.

    .venv/bin/python bench/config_size.py
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hfl.crypto.signing import SigningKey  # noqa: E402
from hfl.domain import NodeInfo  # noqa: E402
from hfl.proto.v1 import common_pb2  # noqa: E402
from hfl.rpc import serde  # noqa: E402
from hfl.rpc.settings import Settings  # noqa: E402
from services.authority.registry import Registry  # noqa: E402
from services.authority.service import Authority  # noqa: E402


def check_all(wire: bytes, key: bytes, times: int) -> float:
    """Seconds for ``times`` facilities to parse and verify one config each."""
    t0 = time.perf_counter()
    for _ in range(times):
        msg = common_pb2.RoundConfig.FromString(wire)
        serde.config_from_proto(msg).verify(key)
    return time.perf_counter() - t0


def main() -> int:
    rows = []
    for n in (8, 64, 200):
        with tempfile.TemporaryDirectory() as tmp:
            registry = Registry(Path(tmp) / "authority.db")
            settings = Settings(  # no facility misbehaves: buckets of 4 could not single out 1 in 6
                role="authority",
                tls=False,
                state_dir=Path(tmp),
                min_facilities=n,
                bucket_size=4,
                max_byzantine=0,
            )
            auth = Authority(settings, SigningKey.generate(), registry)
            for i in range(n):
                key = SigningKey.generate().public_bytes
                registry.upsert(
                    NodeInfo(f"facility-{i:03d}", "facility", f"10.0.{i // 250}.{i % 250}:50051", key)
                )
            for i in range(2):
                registry.upsert(
                    NodeInfo(f"fog-{i}", "fog", f"10.1.0.{i}:50051", SigningKey.generate().public_bytes)
                )
            for i in range(4):
                key = SigningKey.generate().public_bytes
                registry.upsert(NodeInfo(f"validator-{i}", "validator", f"10.2.0.{i}:50051", key))
            config = auth.make_config(1, 0, bytes(32))
            full = serde.config_to_proto(config).SerializeToString()
            views = [
                serde.config_to_proto(config.bucket_view(b.bucket_id).sign(auth.key)) for b in config.buckets
            ]
            view = max(v.ByteSize() for v in views)
            rows.append(
                {
                    "facilities": n,
                    "full_config_bytes": len(full),
                    "bucket_view_bytes_max": view,
                    "per_round_all_facilities_mb_full": round(n * len(full) / 1e6, 3),
                    "per_round_all_facilities_mb_views": round(n * view / 1e6, 3),
                    "check_s_per_round_full": round(check_all(full, auth.key.public_bytes, n), 3),
                    "check_s_per_round_views": round(
                        check_all(views[0].SerializeToString(), auth.key.public_bytes, n), 3
                    ),
                }
            )
            registry.close()
            print(json.dumps(rows[-1]), flush=True)
    out = ROOT / "bench" / "results" / "config_size.json"
    out.write_text(json.dumps({"note": "one core of a shared 2-core machine", "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
