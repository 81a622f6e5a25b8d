#!/usr/bin/env bash
# Builds the Debian package: target/debian/airlock_<version>_<arch>.deb.
#
#   bash scripts/build-deb.sh
#
# Installs cargo-deb if it is missing, builds the release binary once, generates the man
# pages and shell completions from that binary into target/assets/, and packages it all
# with `cargo deb --no-build` (the contents are listed in Cargo.toml, [package.metadata.deb]).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# Cargo may build elsewhere; the assets and the package always go under ./target.
target_dir="${CARGO_TARGET_DIR:-$root/target}"
assets="$root/target/assets"
out="$root/target/debian"

if ! command -v cargo-deb >/dev/null 2>&1; then
    echo "build-deb: installing cargo-deb" >&2
    cargo install cargo-deb --locked
fi

echo "build-deb: building the release binary" >&2
cargo build --release --locked
bin="$target_dir/release/airlock"
[ -x "$bin" ] || { echo "build-deb: $bin was not built" >&2; exit 1; }

echo "build-deb: generating man pages and completions into $assets" >&2
rm -rf "$assets"
mkdir -p "$assets/man" "$assets/completions"
"$bin" man --dir "$assets/man"
gzip -9 -n "$assets"/man/*.1
"$bin" completions bash > "$assets/completions/airlock.bash"
"$bin" completions zsh > "$assets/completions/_airlock"
"$bin" completions fish > "$assets/completions/airlock.fish"

echo "build-deb: packaging" >&2
mkdir -p "$out"
cargo deb --no-build --locked --output "$out"
ls -l "$out"/*.deb
