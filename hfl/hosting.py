"""The facilities file of `hfl serve facilities` (HFL_FACILITIES_FILE), checked without I/O.

The file is ``{"facilities": [{"HFL_NODE_ID": "facility-01", "HFL_STATE_DIR": "...", ...}, ...]}``: one
object of HFL_* settings per hosted facility (services/facility/host.py reads it and starts them). Every
mistake is refused in plain words before any facility starts.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from hfl.errors import ConfigError

MAX_HOSTED = 1000  # facilities one process hosts at most
# Per-facility settings a host entry may not set: they belong to the process.
PROCESS_ONLY = frozenset({"role", "metrics_port", "facilities_file", "log_level"})
REQUIRED = ("HFL_NODE_ID", "HFL_STATE_DIR")  # each hosted facility needs its own


def hosted_entries(doc: object, path: str, settings: Collection[str]) -> list[dict[str, str]]:
    """The per-facility settings of the parsed file at ``path`` (named in the errors). ``settings``: the
    names of the hfl settings (lower case, without HFL_), hfl.rpc.settings.Settings.model_fields."""
    entries = doc.get("facilities") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f'{path} must hold {{"facilities": [...]}} with at least one facility')
    if len(entries) > MAX_HOSTED:
        raise ConfigError(f"{path} lists {len(entries)} facilities; one process hosts at most {MAX_HOSTED}")
    out: list[dict[str, str]] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        checked = check_entry(entry, f"{path}: facility #{i + 1}", settings)
        if checked["HFL_NODE_ID"] in seen:
            raise ConfigError(f"{path}: facility {checked['HFL_NODE_ID']} is listed twice")
        seen.add(checked["HFL_NODE_ID"])
        out.append(checked)
    return out


def check_entry(entry: Any, where: str, settings: Collection[str]) -> dict[str, str]:
    """One hosted facility's settings: HFL_* names of hfl settings to text values, not the process's
    own settings, with its own node id and state directory. ``where`` names it in the errors."""
    if not isinstance(entry, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in entry.items()
    ):
        raise ConfigError(f"{where} must be an object of HFL_* names to text values")
    for key in entry:
        name = key.removeprefix("HFL_").lower()
        if not key.startswith("HFL_") or name not in settings:
            raise ConfigError(f"{where}: {key} is not an hfl setting")
        if name in PROCESS_ONLY:
            raise ConfigError(
                f"{where}: {key} is shared by the whole process; set it in the environment instead"
            )
    for required in REQUIRED:
        if not entry.get(required):
            raise ConfigError(f"{where} needs its own {required}")
    return entry
