#!/usr/bin/env bash
# Best-effort system packages for the container, metrics and browser tests (`make test` runs this first):
# Debian's debootstrap builds the offline base image, Prometheus checks the metrics, chromium and its
# driver run the console in a real browser. Installed with apt
# only when missing and when we are root; otherwise the tests that need them are skipped with a reason.
set -uo pipefail
apt_install() {  # $1: package, $2: what it is for
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        echo "== installing $1 (apt) for $2 (log: /tmp/hfl-apt-$1.log)"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$1"; } \
            >"/tmp/hfl-apt-$1.log" 2>&1 || echo "== could not install $1: $2 will be skipped"
    else
        echo "== $1 is not installed (apt-get install -y $1 as root): $2 will be skipped"
    fi
}
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
    apt_install prometheus "the metrics test"
fi
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    apt_install chromium "the console's real-browser test"
    apt_install chromium-driver "the console's real-browser test"
fi
if docker info >/dev/null 2>&1 && ! command -v debootstrap >/dev/null \
    && ! docker image inspect hfl-base:bookworm >/dev/null 2>&1; then
    apt_install debootstrap "the container tests (offline image build)"
fi
exit 0
