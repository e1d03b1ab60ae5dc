#!/usr/bin/env bash
# Builds a Debian bookworm base image with Python 3.11, venv and tini, without pulling
# from any container registry: for air-gapped or proxied sites (and this project's CI).
#
#   scripts/build-base-image.sh [TAG]          default TAG: mctq-base:bookworm
#
# Environment:
#   DEBIAN_MIRROR   Debian archive to bootstrap from; default: the first "URIs:" of the host's
#                   /etc/apt/sources.list.d/debian.sources (or the first "deb" line of sources.list).
#   EXTRA_CA_BUNDLE A PEM file added to the image's trust store (sites whose TLS is intercepted).
#   REUSE=1         Keep an existing TAG when it was built by this same script with the same
#                   EXTRA_CA_BUNDLE (both are recorded as image labels); rebuild otherwise.
# Needs root, debootstrap and a running Docker engine (scripts/start-docker.sh provides both).
set -euo pipefail

tag="${1:-mctq-base:bookworm}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# What the image is made of, recorded as labels so REUSE=1 can tell a stale image.
recipe="$(sha256sum "$here/$(basename "${BASH_SOURCE[0]}")" | cut -d' ' -f1)"
if [[ -n ${EXTRA_CA_BUNDLE:-} ]]; then
  [[ -r $EXTRA_CA_BUNDLE ]] || { echo "build-base-image: EXTRA_CA_BUNDLE=$EXTRA_CA_BUNDLE is not readable" >&2; exit 2; }
  extra_ca="$(sha256sum "$EXTRA_CA_BUNDLE" | cut -d' ' -f1)"
else
  extra_ca=none
fi

if [[ ${REUSE:-0} == 1 ]]; then
  labels="$(docker image inspect --format \
    '{{index .Config.Labels "io.mctq-job.base.recipe"}} {{index .Config.Labels "io.mctq-job.base.extra-ca"}}' \
    "$tag" 2>/dev/null || true)"
  if [[ $labels == "$recipe $extra_ca" ]]; then
    echo "build-base-image: $tag is up to date (same recipe and CA bundle); reusing it"
    exit 0
  fi
fi

host_mirror() {
  local f=/etc/apt/sources.list.d/debian.sources
  if [[ -r $f ]]; then
    awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' "$f"
  elif [[ -r /etc/apt/sources.list ]]; then
    awk '$1 == "deb" && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list
  fi
}

mirror="${DEBIAN_MIRROR:-$(host_mirror)}"
if [[ -z $mirror ]]; then
  echo "build-base-image: no Debian mirror found; set DEBIAN_MIRROR" >&2
  exit 2
fi
[[ $(id -u) == 0 ]] || { echo "build-base-image: debootstrap needs root (run with sudo)" >&2; exit 2; }
command -v debootstrap >/dev/null || { echo "build-base-image: debootstrap is not installed (scripts/start-docker.sh installs it)" >&2; exit 2; }

root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT

echo "build-base-image: bootstrapping Debian bookworm into $root (about a minute)"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,tini \
  bookworm "$root" "$mirror" >"$root.debootstrap.log" 2>&1 || {
  tail -n 30 "$root.debootstrap.log" >&2; rm -f "$root.debootstrap.log"; exit 1; }
rm -f "$root.debootstrap.log"

if [[ -n ${EXTRA_CA_BUNDLE:-} ]]; then
  install -m 0644 "$EXTRA_CA_BUNDLE" "$root/usr/local/share/ca-certificates/extra-ca.crt"
  # A bundle holds many certificates: openssl's rehash warns about it, harmlessly.
  chroot "$root" update-ca-certificates 2>&1 >/dev/null | { grep -v '^rehash: warning: skipping' || true; } >&2
fi

# debootstrap copied the build host's resolver and name; Docker provides both at run time.
: >"$root/etc/resolv.conf"
: >"$root/etc/hostname"

# What a runtime never needs: package lists, caches, docs, manuals, locales.
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/* "$root"/usr/share/doc/* \
       "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/*

tar -C "$root" --numeric-owner -c . | docker import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["/bin/bash"]' \
  --change "LABEL io.mctq-job.base.recipe=$recipe io.mctq-job.base.extra-ca=$extra_ca" \
  - "$tag" >/dev/null
echo "build-base-image: built $tag"
