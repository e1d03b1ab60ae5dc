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
# Needs root, debootstrap and a running Docker engine.
set -euo pipefail

tag="${1:-mctq-base:bookworm}"

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
command -v debootstrap >/dev/null || { echo "build-base-image: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 2; }

root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT

debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,tini \
  bookworm "$root" "$mirror"

if [[ -n ${EXTRA_CA_BUNDLE:-} ]]; then
  install -m 0644 "$EXTRA_CA_BUNDLE" "$root/usr/local/share/ca-certificates/extra-ca.crt"
  chroot "$root" update-ca-certificates >/dev/null
fi

# What a runtime never needs: package lists, caches, docs, manuals, locales.
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/* "$root"/usr/share/doc/* \
       "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/*

tar -C "$root" --numeric-owner -c . | docker import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["/bin/bash"]' \
  - "$tag"
echo "build-base-image: built $tag"
