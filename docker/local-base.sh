#!/usr/bin/env bash
# Builds a Debian 12 (bookworm) base image from Debian's package archive with debootstrap,
# for machines that can reach Debian's packages but no container registry:
#
#   docker/local-base.sh [TAG]        # default TAG: raftmetrics/bookworm-base:local
#   docker build --build-arg RUNTIME_IMAGE=raftmetrics/bookworm-base:local ...
#
# Needs root (debootstrap) and installs debootstrap with apt-get when it is missing. The
# root file system is cached as a tarball under ${RAFTMETRICS_CACHE:-~/.cache/raftmetrics}.
set -euo pipefail

tag="${1:-raftmetrics/bookworm-base:local}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
cache="${RAFTMETRICS_CACHE:-$HOME/.cache/raftmetrics}"
tarball="$cache/bookworm-rootfs.tar"

if docker image inspect "$tag" >/dev/null 2>&1; then
  echo "base image $tag is there"
  exit 0
fi
mkdir -p "$cache"
if [ ! -s "$tarball" ]; then
  [ "$(id -u)" -eq 0 ] || { echo "debootstrap needs root" >&2; exit 1; }
  command -v debootstrap >/dev/null 2>&1 || {
    apt-get update -qq && apt-get install -y -qq debootstrap
  }
  rootfs="$(mktemp -d)"
  trap 'rm -rf "$rootfs"' EXIT
  echo "== debootstrap bookworm from $mirror"
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >/dev/null
  # A slim image: no package caches, documentation or locales.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
  tar -C "$rootfs" -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
fi
echo "== importing $tarball as $tag"
docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["bash"]' \
  "$tarball" "$tag" >/dev/null
