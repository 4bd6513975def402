#!/usr/bin/env bash
# Build the local base image hfl-base:bookworm from Debian packages, without any container registry.
#
# Uses debootstrap (Debian's own installer) to create a minimal Debian 12 "bookworm" system with
# python3, python3-venv and ca-certificates, removes caches and documentation, and imports the result
# into Docker with `docker import`. Needs root, debootstrap and access to a Debian mirror.
#
# Settings (environment variables):
#   BASE_IMAGE_TAG  name of the image to create          (default: hfl-base:bookworm)
#   FORCE=1         rebuild even if the image already exists
#   DEBIAN_MIRROR   Debian mirror                        (default: http://deb.debian.org/debian)
#   SECURITY_MIRROR Debian security mirror               (default: http://deb.debian.org/debian-security)
#   BASE_WORKDIR    scratch folder                       (default: <repo>/deploy/.base)
#   EXTRA_CA_FILE   optional PEM file with extra CA certificates to trust inside the image
#                   (for example a hospital's TLS-inspecting proxy); not added unless set
#   KEEP_ROOTFS=1   keep the unpacked folder after import (for inspection)
#   DEBIAN_KEYRING  Debian signing keys used to verify the downloads
#                   (default: /usr/share/keyrings/debian-archive-keyring.gpg)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TAG="${BASE_IMAGE_TAG:-hfl-base:bookworm}"
SUITE="bookworm"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
WORKDIR="${BASE_WORKDIR:-$REPO_ROOT/deploy/.base}"
ROOTFS="$WORKDIR/rootfs"
DEB_CACHE="$WORKDIR/debs"
PACKAGES="python3,python3-venv,ca-certificates"
KEYRING="${DEBIAN_KEYRING:-/usr/share/keyrings/debian-archive-keyring.gpg}"

say() { printf '[build-base] %s\n' "$*"; }
fail() { printf '[build-base] ERROR: %s\n' "$*" >&2; exit 1; }

start=$(date +%s)

if [[ "${FORCE:-0}" != "1" ]] && docker image inspect "$TAG" >/dev/null 2>&1; then
    say "The image $TAG already exists; nothing to do (set FORCE=1 to rebuild it)."
    exit 0
fi

[[ "$(id -u)" == "0" ]] || fail "this step must run as root (debootstrap needs it). Try: sudo $0"
command -v debootstrap >/dev/null || fail "debootstrap is not installed. Install it with: apt-get install -y debootstrap"
command -v docker >/dev/null || fail "docker is not installed or not on PATH."
docker info >/dev/null 2>&1 || fail "cannot talk to the Docker engine (is it running, and may this user use it?)."
[[ -r "$KEYRING" ]] || fail "the Debian signing keys ($KEYRING) are missing, so downloads cannot be \
verified. Install them with: apt-get install -y debian-archive-keyring (or set DEBIAN_KEYRING)."
if [[ -n "${EXTRA_CA_FILE:-}" && ! -r "$EXTRA_CA_FILE" ]]; then
    fail "EXTRA_CA_FILE=$EXTRA_CA_FILE cannot be read."
fi

# Unmount anything still mounted inside the folder (debootstrap or an interrupted run may leave /proc).
unmount_all() {
    [[ -d "$ROOTFS" ]] || return 0
    awk -v root="$(realpath "$ROOTFS")" '$2 == root || index($2, root "/") == 1 { print $2 }' /proc/mounts \
        | sort -r | while read -r m; do umount -l "$m" || true; done
}
trap unmount_all EXIT

in_root() { chroot "$ROOTFS" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 "$@"; }

say "Preparing a fresh folder at $ROOTFS."
unmount_all
rm -rf --one-file-system "$ROOTFS"
mkdir -p "$ROOTFS" "$DEB_CACHE"

say "Step 1/4: installing a minimal Debian $SUITE with $PACKAGES from $MIRROR (takes a few minutes)."
debootstrap --variant=minbase --include="$PACKAGES" --cache-dir="$DEB_CACHE" --keyring="$KEYRING" \
    "$SUITE" "$ROOTFS" "$MIRROR" >"$WORKDIR/debootstrap.log" 2>&1 \
    || { tail -n 30 "$WORKDIR/debootstrap.log" >&2; fail "debootstrap failed; full log in $WORKDIR/debootstrap.log"; }

say "Step 2/4: applying the latest Debian security and point-release updates."
cat >"$ROOTFS/etc/apt/sources.list" <<SOURCES
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
SOURCES
# Keep future apt installs in derived images small as well (no man pages or docs).
mkdir -p "$ROOTFS/etc/dpkg/dpkg.cfg.d" "$ROOTFS/etc/apt/apt.conf.d"
cat >"$ROOTFS/etc/dpkg/dpkg.cfg.d/01-hfl-nodoc" <<'NODOC'
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/lintian/*
path-exclude=/usr/share/locale/*
NODOC
cat >"$ROOTFS/etc/apt/apt.conf.d/01-hfl-slim" <<'APTCONF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
APTCONF
printf '#!/bin/sh\nexit 101\n' >"$ROOTFS/usr/sbin/policy-rc.d"
chmod 0755 "$ROOTFS/usr/sbin/policy-rc.d"
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
unmount_all
mount -t proc proc "$ROOTFS/proc"
if [[ -n "${EXTRA_CA_FILE:-}" ]]; then
    say "Adding the extra CA certificates from $EXTRA_CA_FILE."
    cp "$EXTRA_CA_FILE" "$ROOTFS/usr/local/share/ca-certificates/hfl-extra-ca.crt"
    in_root update-ca-certificates >/dev/null
fi
in_root apt-get update -qq
in_root apt-get -y -qq -o Dpkg::Options::=--force-confold dist-upgrade >"$WORKDIR/upgrade.log" 2>&1 \
    || { tail -n 30 "$WORKDIR/upgrade.log" >&2; fail "the update failed; full log in $WORKDIR/upgrade.log"; }
in_root python3 -c 'import ensurepip, venv, ssl, sqlite3' \
    || fail "python3 in the new system is incomplete (venv/ssl missing)."

say "Step 3/4: removing caches, documentation and logs to keep the image small."
in_root apt-get clean
unmount_all
if grep -q " $(realpath "$ROOTFS")[/ ]" /proc/mounts; then
    fail "something is still mounted inside $ROOTFS; unmount it and try again."
fi
rm -f "$ROOTFS/usr/sbin/policy-rc.d"
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/debconf/*-old \
    "$ROOTFS"/var/lib/dpkg/*-old "$ROOTFS"/var/log/* "$ROOTFS"/tmp/* "$ROOTFS"/var/tmp/* \
    "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* "$ROOTFS"/usr/share/lintian/* \
    "$ROOTFS"/usr/share/locale/*
find "$ROOTFS/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
find "$ROOTFS/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
# Docker provides these at run time; do not bake in the build machine's values.
: >"$ROOTFS/etc/resolv.conf"
rm -f "$ROOTFS/etc/hostname"
: >"$ROOTFS/etc/machine-id"

say "Step 4/4: importing the folder into Docker as $TAG."
# Import untagged first and tag only after a successful check, so a failure never leaves a broken tag.
image_id=$(tar --numeric-owner --one-file-system -C "$ROOTFS" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --message "Minimal Debian $SUITE with python3 for hfl (debootstrap, built $(date -u +%Y-%m-%dT%H:%M:%SZ))" \
    -) || fail "docker import failed."
check=$(docker run --rm --network none "$image_id" python3 -c \
    'import sys, venv, ssl, ensurepip; print("Python", sys.version.split()[0], "with venv and ssl is ready.")') \
    || { docker rmi "$image_id" >/dev/null 2>&1 || true; fail "the new image does not run python3 correctly."; }
say "Check: $check"
docker tag "$image_id" "$TAG"

if [[ "${KEEP_ROOTFS:-0}" != "1" ]]; then
    rm -rf --one-file-system "$ROOTFS"
fi

size=$(docker image inspect -f '{{.Size}}' "$TAG")
say "Done: $TAG is $((size / 1000000)) MB and took $(( $(date +%s) - start )) seconds."
