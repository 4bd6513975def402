#!/usr/bin/env bash
# Fill deploy/wheels/ with every wheel the hfl image needs, so the image build itself needs no network.
#
# Downloads the pinned runtime dependencies (requirements/runtime.txt) as ready-made Linux x86_64
# wheels for CPython 3.11, builds the hfl wheel from this source tree, checks that every wheel fits
# Debian 12 (glibc 2.36) and Python 3.11, and writes SHA256SUMS so the folder can be verified after it
# has been carried into an isolated network.
#
# Settings (environment variables):
#   PYTHON        Python used to run pip (default: <repo>/.venv/bin/python, else python3). Any
#                 Python 3.8+ with pip works; the wheels are chosen for the image, not for this machine.
#   WHEEL_DIR     output folder            (default: <repo>/deploy/wheels)
#   CLEAN=1       empty the folder first (otherwise wheels already there are reused)
#   TARGET_GLIBC  newest glibc the wheels may require (default: 2.36, Debian 12)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
WHEEL_DIR="${WHEEL_DIR:-$REPO_ROOT/deploy/wheels}"
REQUIREMENTS="$REPO_ROOT/requirements/runtime.txt"
CONSOLE_REQUIREMENTS="$REPO_ROOT/requirements/console.txt"  # the console (`hfl console`) runs from the same image
TARGET_GLIBC="${TARGET_GLIBC:-2.36}"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$REPO_ROOT/.venv/bin/python" ]]; then PYTHON="$REPO_ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi

say() { printf '[wheelhouse] %s\n' "$*"; }
fail() { printf '[wheelhouse] ERROR: %s\n' "$*" >&2; exit 1; }

start=$(date +%s)
[[ -r "$REQUIREMENTS" ]] || fail "cannot read $REQUIREMENTS."
"$PYTHON" -m pip --version >/dev/null 2>&1 || fail "$PYTHON has no pip; set PYTHON to a Python that has pip."

if [[ "${CLEAN:-0}" == "1" ]]; then
    say "Emptying $WHEEL_DIR (CLEAN=1)."
    rm -rf "$WHEEL_DIR"
fi
mkdir -p "$WHEEL_DIR"

say "Step 1/4: downloading the pinned dependencies from $REQUIREMENTS into $WHEEL_DIR."
# The platform tags make pip pick wheels for the image (Linux x86_64, CPython 3.11), whatever machine
# this runs on. manylinux2014 = manylinux_2_17; manylinux_2_28 is the newest that Debian 12 satisfies
# among those commonly published. Only wheels are accepted: nothing is compiled.
"$PYTHON" -m pip download --quiet \
    --only-binary=:all: \
    --implementation cp --python-version 3.11 --abi cp311 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 \
    --dest "$WHEEL_DIR" \
    -r "$REQUIREMENTS" -r "$CONSOLE_REQUIREMENTS"
# The image installs exactly these pins.
cat "$REQUIREMENTS" "$CONSOLE_REQUIREMENTS" | grep -v '^-r ' > "$WHEEL_DIR/requirements.txt"

say "Step 2/4: building the hfl wheel from $REPO_ROOT."
build_dir="$(mktemp -d)"
trap 'rm -rf "$build_dir"' EXIT
# Build from a clean copy so the source tree gets no build/ or *.egg-info leftovers.
tar -C "$REPO_ROOT" --exclude='__pycache__' --exclude='*.pyc' --exclude='*.egg-info' \
    -c pyproject.toml hfl services $(cd "$REPO_ROOT" && ls README.md LICENSE 2>/dev/null) \
    | tar -C "$build_dir" -x
rm -f "$WHEEL_DIR"/hfl-*.whl
"$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$WHEEL_DIR" "$build_dir" \
    || fail "building the hfl wheel failed (see the messages above)."

say "Step 3/4: checking that every wheel suits Python 3.11 on Debian 12 (glibc $TARGET_GLIBC)."
"$PYTHON" - "$WHEEL_DIR" "$TARGET_GLIBC" <<'PYCHECK'
import pathlib
import re
import sys

wheel_dir = pathlib.Path(sys.argv[1])
target = tuple(int(p) for p in sys.argv[2].split("."))
legacy = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}


def platform_ok(plat: str) -> bool:
    if plat == "any":
        return True
    m = re.fullmatch(r"manylinux_(\d+)_(\d+)_x86_64", plat)
    if m:
        return (int(m.group(1)), int(m.group(2))) <= target
    m = re.fullmatch(r"(manylinux1|manylinux2010|manylinux2014)_x86_64", plat)
    return bool(m) and legacy[m.group(1)] <= target


def python_ok(py: str, abi: str) -> bool:
    if abi == "none":
        return py in {"py3", "py311", "cp311"} or py.startswith("py3")
    if abi == "abi3":
        return bool(re.fullmatch(r"cp3\d+", py)) and int(py[3:]) <= 11
    return abi == "cp311" and py == "cp311"


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


pins = {}
for line in (wheel_dir / "requirements.txt").read_text().splitlines():
    line = line.split("#", 1)[0].strip()
    if line:
        name, sep, version = line.partition("==")
        if not sep:
            sys.exit(f"requirements.txt: '{line}' is not pinned with ==; every runtime package must be pinned")
        pins[norm(name)] = version.strip()

problems = []
found = set()
for wheel in sorted(wheel_dir.glob("*.whl")):
    parts = wheel.name[:-4].split("-")
    if len(parts) not in (5, 6):
        problems.append(f"{wheel.name}: not a valid wheel file name")
        continue
    name, version = norm(parts[0]), parts[1]
    if name in pins and pins[name] != version:
        print(f"[wheelhouse] removing {wheel.name} (no longer pinned; the pin is {pins[name]})")
        wheel.unlink()
        continue
    if name not in pins and name != "hfl":
        print(f"[wheelhouse] note: {wheel.name} is not listed in requirements/runtime.txt")
    found.add(name)
    pys, abis, plats = (p.split(".") for p in parts[-3:])
    ok = any(python_ok(py, abi) for py in pys for abi in abis) and any(platform_ok(p) for p in plats)
    if not ok:
        problems.append(f"{wheel.name}: does not run on CPython 3.11 / Linux x86_64 / glibc {sys.argv[2]}")
leftovers = [p.name for p in wheel_dir.iterdir() if p.suffix not in {".whl", ".txt"} and p.name != "SHA256SUMS"]
if leftovers:
    problems.append("unexpected files (only wheels are allowed): " + ", ".join(leftovers))
missing = sorted(set(pins) - found)
if missing:
    problems.append("no wheel for: " + ", ".join(missing))
if "hfl" not in found:
    problems.append("the hfl wheel itself is missing")
if problems:
    print("\n".join(problems), file=sys.stderr)
    sys.exit(1)
print(f"[wheelhouse] all {len(found)} wheels are compatible and match the pins.")
PYCHECK

say "Step 4/4: writing checksums to $WHEEL_DIR/SHA256SUMS."
(cd "$WHEEL_DIR" && rm -f SHA256SUMS && sha256sum -- *.whl requirements.txt > SHA256SUMS.tmp && mv SHA256SUMS.tmp SHA256SUMS)

count=$(find "$WHEEL_DIR" -name '*.whl' | wc -l)
say "Done: $count wheels, $(du -sh "$WHEEL_DIR" | cut -f1), in $(( $(date +%s) - start )) seconds."
