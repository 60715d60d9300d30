#!/bin/sh
# Install a released crabbox binary, verified against the release's SHA256SUMS.
#
#   curl -fsSL https://github.com/OWNER/crabbox/releases/download/v0.1.0/install.sh | sh -s -- v0.1.0
#
# Arguments / environment:
#   $1 or CRABBOX_VERSION           release tag to install (e.g. v0.1.0); required
#   CRABBOX_INSTALL_BASE_URL        where the archives and SHA256SUMS live
#                                   (default: the GitHub release download URL of the tag)
#   CRABBOX_INSTALL_DIR             where the binary goes (default: ~/.local/bin)
#   CRABBOX_REPOSITORY              owner/name on GitHub (default: OWNER/crabbox)
#
# The archive is refused unless SHA256SUMS lists it with a matching checksum.
set -eu

die() {
	echo "install.sh: $*" >&2
	exit 1
}

version=${1:-${CRABBOX_VERSION:-}}
[ -n "$version" ] || die "no version given: pass a release tag (install.sh v0.1.0) or set CRABBOX_VERSION"
case $version in v*) ;; *) version="v$version" ;; esac

repository=${CRABBOX_REPOSITORY:-OWNER/crabbox}
base_url=${CRABBOX_INSTALL_BASE_URL:-https://github.com/$repository/releases/download/$version}
install_dir=${CRABBOX_INSTALL_DIR:-$HOME/.local/bin}

os=$(uname -s)
arch=$(uname -m)
case "$os/$arch" in
Linux/x86_64 | Linux/amd64) target=x86_64-unknown-linux-gnu ;;
Linux/aarch64 | Linux/arm64) target=aarch64-unknown-linux-gnu ;;
Darwin/arm64 | Darwin/aarch64) target=aarch64-apple-darwin ;;
*) die "no release binary for $os/$arch; build from source instead: cargo install --locked --git https://github.com/$repository crabbox-pond" ;;
esac

archive="crabbox-${version#v}-$target.tar.gz"

if command -v sha256sum >/dev/null 2>&1; then
	sha256() { sha256sum "$1" | cut -d' ' -f1; }
elif command -v shasum >/dev/null 2>&1; then
	sha256() { shasum -a 256 "$1" | cut -d' ' -f1; }
else
	die "neither sha256sum nor shasum is installed; install coreutils (or perl's shasum) to verify the download"
fi

if command -v curl >/dev/null 2>&1; then
	fetch() { curl -fsSL --retry 3 -o "$2" "$1"; }
elif command -v wget >/dev/null 2>&1; then
	fetch() { wget -q -O "$2" "$1"; }
else
	die "neither curl nor wget is installed; install one of them"
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM

echo "Downloading $base_url/$archive" >&2
fetch "$base_url/$archive" "$tmp/$archive" || die "could not download $base_url/$archive (does release $version exist for $target?)"
fetch "$base_url/SHA256SUMS" "$tmp/SHA256SUMS" || die "could not download $base_url/SHA256SUMS; refusing to install an unverified binary"

# A line is "<hex>  <name>" (or "<hex> *<name>" in binary mode).
expected=$(awk -v name="$archive" '$2 == name || $2 == "*" name { print $1; exit }' "$tmp/SHA256SUMS")
[ -n "$expected" ] || die "SHA256SUMS has no entry for $archive; refusing to install an unverified binary"
actual=$(sha256 "$tmp/$archive")
[ "$expected" = "$actual" ] || die "checksum mismatch for $archive: SHA256SUMS says $expected, the download is $actual; refusing to install (retry, or report a tampered release)"

tar -xzf "$tmp/$archive" -C "$tmp"
[ -f "$tmp/crabbox" ] || die "$archive does not contain a crabbox binary"
mkdir -p "$install_dir"
# Copy next to the destination, then rename: a running crabbox is never half-overwritten.
cp "$tmp/crabbox" "$install_dir/.crabbox.tmp.$$"
chmod 755 "$install_dir/.crabbox.tmp.$$"
mv -f "$install_dir/.crabbox.tmp.$$" "$install_dir/crabbox"
echo "Installed crabbox $version ($target) to $install_dir/crabbox" >&2
case ":$PATH:" in
*":$install_dir:"*) ;;
*) echo "Add $install_dir to PATH to run it: export PATH=\"$install_dir:\$PATH\"" >&2 ;;
esac
