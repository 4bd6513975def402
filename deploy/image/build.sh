#!/usr/bin/env bash
# Build the hfl container image without pulling anything from a container registry.
#
#   1. base image: if BASE_IMAGE is not set, build (or reuse) the local Debian image hfl-base:bookworm
#   2. wheelhouse: download the pinned wheels and build the hfl wheel into deploy/wheels/
#   3. image:      docker build with no network access, installing only from deploy/wheels/
#
# Settings (environment variables):
#   BASE_IMAGE   base to build on, e.g. python:3.11-slim (default: hfl-base:bookworm, built locally)
#   IMAGE        name of the result             (default: hfl:latest)
#   OFFLINE=1    inside an isolated network: do not download anything. Uses the wheels already in
#                deploy/wheels/ and a base image already loaded with `docker load`.
#   FORCE=1      rebuild the local base image even if it exists
#   KEEP_BUILD_STAGE=1  keep the intermediate install-stage image (faster rebuilds, more disk)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$REPO_ROOT/deploy/image"
IMAGE="${IMAGE:-hfl:latest}"
WHEEL_DIR="$REPO_ROOT/deploy/wheels"
LOCAL_BASE="${BASE_IMAGE_TAG:-hfl-base:bookworm}"

say() { printf '[build] %s\n' "$*"; }
fail() { printf '[build] ERROR: %s\n' "$*" >&2; exit 1; }

command -v docker >/dev/null || fail "docker is not installed or not on PATH."
docker info >/dev/null 2>&1 || fail "cannot talk to the Docker engine (is it running, and may this user use it?)."

total_start=$(date +%s)
timings=()
# Fingerprint of the sources, taken before the wheel is built; stored as an image label so tests (and
# people) can tell whether hfl:latest matches this tree: docker image inspect -f '{{ index .Config.Labels
# "org.hfl.source-hash" }}' hfl:latest   versus   python3 deploy/image/source_hash.py
source_hash=$(python3 "$HERE/source_hash.py" "$REPO_ROOT") || fail "could not fingerprint the source tree."

# --- 1. base image -------------------------------------------------------------------------------
t=$(date +%s)
if [[ -z "${BASE_IMAGE:-}" ]]; then
    BASE_IMAGE="$LOCAL_BASE"
    if [[ "${OFFLINE:-0}" == "1" ]]; then
        docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 || fail "the base image $BASE_IMAGE is not loaded. \
Copy it from the connected machine (docker save / docker load), see docs/offline-build.md."
        say "Step 1/3: using the base image $BASE_IMAGE that is already loaded."
    else
        say "Step 1/3: preparing the local base image $BASE_IMAGE."
        BASE_IMAGE_TAG="$LOCAL_BASE" bash "$HERE/build-base.sh"
    fi
else
    docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 || fail "the base image $BASE_IMAGE is not available \
locally. Load it first (docker pull $BASE_IMAGE on a machine that may use a registry, or docker load)."
    say "Step 1/3: using the base image $BASE_IMAGE."
fi
timings+=("base image: $(( $(date +%s) - t ))s")

# --- 2. wheelhouse -------------------------------------------------------------------------------
t=$(date +%s)
if [[ "${OFFLINE:-0}" == "1" ]]; then
    say "Step 2/3: checking the wheels already in $WHEEL_DIR (OFFLINE=1, nothing is downloaded)."
    [[ -f "$WHEEL_DIR/SHA256SUMS" ]] || fail "$WHEEL_DIR/SHA256SUMS is missing; copy the whole wheels folder \
from the connected machine, see docs/offline-build.md."
    (cd "$WHEEL_DIR" && sha256sum --check --quiet SHA256SUMS) \
        || fail "some wheels in $WHEEL_DIR are damaged or missing; copy the folder again."
else
    say "Step 2/3: preparing the wheelhouse."
    bash "$HERE/wheelhouse.sh"
fi
timings+=("wheelhouse: $(( $(date +%s) - t ))s")

# --- 3. image ------------------------------------------------------------------------------------
t=$(date +%s)
say "Step 3/3: building $IMAGE on $BASE_IMAGE (no network inside the build)."
# This Dockerfile needs nothing from BuildKit; use the classic builder when the buildx plugin is absent.
if ! docker buildx version >/dev/null 2>&1; then
    export DOCKER_BUILDKIT=0
fi
previous_id=$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)
docker build --network none --pull=false \
    --build-arg BASE_IMAGE="$BASE_IMAGE" --label org.hfl.source-hash="$source_hash" \
    -t "$IMAGE" -f "$REPO_ROOT/deploy/Dockerfile" "$REPO_ROOT"
timings+=("image: $(( $(date +%s) - t ))s")
if [[ "${KEEP_BUILD_STAGE:-0}" != "1" ]]; then
    # The install stage (wheels + pip) is not part of the result; free its disk space.
    docker image prune --force --filter label=org.hfl.stage=build >/dev/null
fi
if [[ -n "$previous_id" && "$previous_id" != "$(docker image inspect -f '{{.Id}}' "$IMAGE")" ]]; then
    # The previous build of this tag is now unnamed; remove it unless a container still uses it.
    docker rmi "$previous_id" >/dev/null 2>&1 || true
fi

say "Checking that the image starts and its libraries load."
docker run --rm --network none --entrypoint python "$IMAGE" \
    -c 'import hfl, grpc, numpy, dp_accounting, cryptography; print("hfl image OK")' \
    | sed 's/^/[build] /'

size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
say "Done: $IMAGE ($((size / 1000000)) MB) on $BASE_IMAGE in $(( $(date +%s) - total_start ))s \
($(IFS=,; echo "${timings[*]}" | sed 's/,/, /g'))."
