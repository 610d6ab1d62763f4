#!/usr/bin/env bash
# Fetches a real-text corpus for `cairn bench train --corpus text --data PATH` from a package
# registry, pinned by version and sha256, and prints the path of its text on stdout.
#   infra/corpus.sh fortunes
#
# fortunes: Debian's `fortunes` package (fortune-mod's data files: quotations, literature, science,
#   computing, songs and poems; English prose and verse, about 2 MB). The text is every plain data
#   file of /usr/share/games/fortunes/ except ascii-art, concatenated in name order, as shipped
#   (the `%` lines that separate the entries stay). Fetched with `apt-get download` (Debian's
#   client); the .deb is checked against the sha256 below before it is unpacked.
# Idempotent: the text is kept in $CAIRN_CACHE/corpora/ and reused.
set -euo pipefail
cache=${CAIRN_CACHE:-$HOME/.cache/cairn}
name=${1:-}
case "$name" in
  fortunes)
    package=fortunes
    version=1:1.99.1-7.3
    sha256=41d0551dc0ff52f875a2ecef7c39da2f672ab468c37e170119f7e0245a9d63c5
    ;;
  *)
    echo "usage: infra/corpus.sh fortunes" >&2
    exit 2
    ;;
esac
out=$cache/corpora/$name.txt
if [ -s "$out" ]; then
  echo "$out"
  exit 0
fi
command -v apt-get >/dev/null || { echo "corpus: apt-get (Debian's package client) is needed for $name" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download "$package=$version" >&2) || {
  echo "corpus: apt-get download $package=$version failed (run apt-get update first?)" >&2
  exit 1
}
deb=$(ls "$work"/*.deb)
got=$(sha256sum "$deb" | cut -d' ' -f1)
if [ "$got" != "$sha256" ]; then
  echo "corpus: $deb has sha256 $got, expected $sha256" >&2
  exit 1
fi
dpkg-deb -x "$deb" "$work/root"
mkdir -p "$cache/corpora"
find "$work/root/usr/share/games/fortunes" -maxdepth 1 -type f ! -name '*.dat' ! -name '*.u8' ! -name 'ascii-art' \
  -print0 | LC_ALL=C sort -z | xargs -0 cat >"$out.tmp"
mv "$out.tmp" "$out"
echo "corpus: $name ($package $version): $(wc -c <"$out") bytes at $out" >&2
echo "$out"
