#!/usr/bin/env bash
# Build the Debian package from this tree: dist/goodsd_<version>-<revision>_<arch>.deb.
#
#   packaging/build-deb.sh            (./dev deb runs it, after installing the build tools)
#
# The package is built from the sdist (so the sdist is proven complete), made offline with
# Debian's own setuptools, unpacked in build/deb with packaging/debian as its debian/ and the
# units and sysusers entry of packaging/ copied in. The Debian version is goodsd.__version__
# plus "-$GOODSD_DEB_REVISION" (default 1). Needs a package index for the pinned files of
# packaging/pins/ (PyPI), unless GOODSD_PIP_OPTIONS points pip at a local wheel house; the
# options are never printed (an index password belongs in pip.conf or PIP_INDEX_URL anyway).
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

say() { printf 'build-deb: %s\n' "$*" >&2; }

version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' goodsd/__init__.py)
[ -n "$version" ] || { say "no __version__ in goodsd/__init__.py"; exit 1; }
debian_version="$version-${GOODSD_DEB_REVISION:-1}"
work=build/deb
rm -rf "$work"
mkdir -p "$work" dist

say "sdist of goodsd $version (Debian's setuptools, offline)"
/usr/bin/python3 -m build --sdist --no-isolation --outdir "$work" . > "$work/sdist.log" 2>&1 \
    || { cat "$work/sdist.log" >&2; exit 1; }
tar -C "$work" -xzf "$work/goodsd-$version.tar.gz"
tree="$work/goodsd-$version"

cp -r "$tree/packaging/debian" "$tree/debian"
cp "$tree/packaging/goodsd.service" "$tree/packaging/goodsd@.service" "$tree/debian/"
# One entry, from the version: what changed is in CHANGELOG.md (changelog.gz once installed).
cat > "$tree/debian/changelog" <<CHANGELOG
goodsd ($debian_version) unstable; urgency=medium

  * goodsd $version: see /usr/share/doc/goodsd/changelog.gz.

 -- goodsd maintainers <maintainers@users.noreply.r-seed-3e5447fb.example>  $(date -R -d "@${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2> /dev/null || date +%s)}")
CHANGELOG

say "dpkg-buildpackage (log: $work/build.log)"
(cd "$tree" && dpkg-buildpackage -b -us -uc) > "$work/build.log" 2>&1 \
    || { tail -40 "$work/build.log" >&2; exit 1; }
arch=$(dpkg --print-architecture)
deb="goodsd_${debian_version}_${arch}.deb"
mv "$work/$deb" dist/
say "dist/$deb"
