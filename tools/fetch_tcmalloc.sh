#!/usr/bin/env bash
# Unpack tcmalloc (gperftools' minimal build) from the distribution's archive into VENV/lib, where the
# `rewardkit` command finds and preloads it (src/rewardkit/cli/allocator.py). Best effort and optional: on a
# system without apt-get or dpkg-deb, or offline, it says so and rewardkit runs on the C library's allocator.
set -u
venv=${1:-.venv}
lib="$venv/lib"
if compgen -G "$lib/libtcmalloc_minimal.so*" >/dev/null; then exit 0; fi
if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
    echo "tcmalloc not fetched (no apt-get/dpkg-deb here): optional; see README 'Memory allocator'" >&2
    exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if (cd "$tmp" && apt-get download -qq libtcmalloc-minimal4 >/dev/null 2>&1) \
        && dpkg-deb -x "$tmp"/libtcmalloc-minimal4_*.deb "$tmp/x"; then
    find "$tmp/x" -name 'libtcmalloc_minimal.so*' ! -name '*debug*' -exec cp -P {} "$lib/" \;
fi
if compgen -G "$lib/libtcmalloc_minimal.so*" >/dev/null; then
    echo "tcmalloc: $(ls "$lib"/libtcmalloc_minimal.so* | head -1)"
else
    echo "tcmalloc not fetched (apt-get download libtcmalloc-minimal4 failed): optional; see README 'Memory allocator'" >&2
fi
