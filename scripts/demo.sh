#!/usr/bin/env bash
# airlock end-to-end demo on a fresh Debian machine.
#
#   sudo bash scripts/demo.sh
#
# Installs what it needs (docker-registry, skopeo, zstd), builds airlock, starts two throw-away
# registries on 127.0.0.1, fills the first one with three small images (one of them a two-platform
# index, all sharing a base layer), exports them into one bundle, inspects and verifies the
# bundle, imports it into the second registry, and shows that every digest is unchanged.
#
# Nothing is left behind: the registries are stopped and the work directory is removed on exit
# (set DEMO_KEEP=1 to keep the work directory, and with it the bundle).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TAG=1.0
NAMES=(demo-a demo-b demo-c)

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

# The demo must not pick up the caller's settings.
unset SOURCE_DOCKER_REGISTRY SOURCE_DOCKER_REPOSITORY SOURCE_DOCKER_USERNAME SOURCE_DOCKER_PASSWORD \
      SOURCE_DOCKER_TAG TARGET_DOCKER_REGISTRY TARGET_DOCKER_REPOSITORY TARGET_DOCKER_USERNAME \
      TARGET_DOCKER_PASSWORD TARGET_DOCKER_TAG

# --- 1. packages ---------------------------------------------------------------------------------
missing=()
command -v docker-registry >/dev/null || missing+=(docker-registry)
command -v skopeo >/dev/null || missing+=(skopeo)
command -v zstd >/dev/null || missing+=(zstd)
if ((${#missing[@]})); then
    [[ $(id -u) == 0 ]] || die "missing ${missing[*]}; run as root: sudo bash scripts/demo.sh"
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y "${missing[@]}"
fi

# --- 2. build ------------------------------------------------------------------------------------
# sudo drops ~/.cargo/bin from PATH: look there too. When the checkout belongs to the user who ran
# sudo and that user has cargo, build as that user so that target/ does not end up owned by root.
owner=$(stat -c %U "$REPO")
owner_home=$(getent passwd "$owner" | cut -d: -f6 || true)
cargo=""
build_as=""
if [[ $owner != root && ${SUDO_USER:-} == "$owner" && -x $owner_home/.cargo/bin/cargo ]]; then
    cargo=$owner_home/.cargo/bin/cargo
    build_as=$owner
elif command -v cargo >/dev/null; then
    cargo=$(command -v cargo)
elif [[ -x $HOME/.cargo/bin/cargo ]]; then
    cargo=$HOME/.cargo/bin/cargo
fi
if [[ -z $cargo ]]; then
    cat >&2 <<'EOF'
demo: cargo not found. Install Rust (1.85 or newer), then run this script again:
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh
or, on Debian 13 and later:
    sudo apt-get install -y cargo
EOF
    exit 1
fi
say "building airlock ($cargo build --release --locked)"
if [[ -n $build_as ]]; then
    (cd "$REPO" && runuser -u "$build_as" -- env HOME="$owner_home" PATH="$(dirname "$cargo"):$PATH" \
        "$cargo" build --release --locked)
else
    (cd "$REPO" && "$cargo" build --release --locked)
fi
AIRLOCK=${CARGO_TARGET_DIR:-$REPO/target}/release/airlock
[[ -x $AIRLOCK ]] || die "build did not produce $AIRLOCK"

# --- 3. two local registries ----------------------------------------------------------------------
WORK=$(mktemp -d /tmp/airlock-demo.XXXXXX)
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ ${DEMO_KEEP:-0} == 1 ]]; then
        echo "demo: work directory kept: $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

# A port nobody listens on (bash's /dev/tcp: no extra tools needed on a fresh machine), below
# the kernel's range of ports for outgoing connections when it leaves room, so that no client
# takes it before the registry binds it.
free_port() {
    local p _ low=32768 span
    read -r low _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true
    span=$((low - 20000))
    ((span >= 2000)) || span=40000
    for _ in $(seq 1 100); do
        p=$((20000 + RANDOM % span))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

# True when the registry on port $1 answers GET /v2/ with 200.
registry_up() {
    local status
    exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
    printf 'GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
    IFS= read -r status <&3 || status=""
    exec 3<&-
    [[ $status == *" 200"* ]]
}

# start_registry NAME: starts docker-registry with its storage under $WORK/NAME, sets REG_PORT.
# A port taken between the check and the registry's bind is met by another port (5 tries).
start_registry() {
    local name=$1 attempt
    for attempt in 1 2 3 4 5; do
        start_registry_once "$name" && return 0
        grep -q "address already in use" "$WORK/$name/registry.log" 2>/dev/null ||
            { cat "$WORK/$name/registry.log" >&2; die "registry $name did not start"; }
        echo "demo: port $REG_PORT was taken meanwhile; another (try $attempt of 5)" >&2
    done
    cat "$WORK/$name/registry.log" >&2
    die "registry $name did not start"
}

# start_registry_once NAME: one try; false when the registry exits before it answers.
start_registry_once() {
    local name=$1 dir=$WORK/$1 pid _
    REG_PORT=$(free_port) || die "no free port"
    mkdir -p "$dir/data"
    cat >"$dir/config.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$REG_PORT
EOF
    docker-registry serve "$dir/config.yml" >"$dir/registry.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    for _ in $(seq 1 100); do
        # Exited (a bind that failed, say): the caller reads its log.
        kill -0 "$pid" 2>/dev/null || return 1
        if registry_up "$REG_PORT" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    cat "$dir/registry.log" >&2
    die "registry $name did not answer on 127.0.0.1:$REG_PORT"
}

say "starting two registries"
start_registry source
SRC=127.0.0.1:$REG_PORT
start_registry target
DST=127.0.0.1:$REG_PORT
echo "source registry: $SRC    target registry: $DST"

# --- 4. three small images in an OCI image layout, pushed with skopeo ------------------------------
LAYOUT=$WORK/layout
mkdir -p "$LAYOUT/blobs/sha256"
printf '{"imageLayoutVersion":"1.0.0"}' >"$LAYOUT/oci-layout"
INDEX_ENTRIES=()

# add_blob FILE: moves FILE into the layout, prints "sha256:HEX SIZE".
add_blob() {
    local hex size
    hex=$(sha256sum "$1" | cut -d' ' -f1)
    size=$(stat -c %s "$1")
    mv "$1" "$LAYOUT/blobs/sha256/$hex"
    echo "sha256:$hex $size"
}

# make_layer NAME TEXT: a gzip layer holding /NAME.txt; prints "DIGEST SIZE DIFF_ID".
make_layer() {
    local src=$WORK/src-$1 diff_id blob
    mkdir -p "$src"
    printf '%s\n' "$2" >"$src/$1.txt"
    tar -C "$src" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf "$WORK/$1.tar" .
    diff_id=sha256:$(sha256sum "$WORK/$1.tar" | cut -d' ' -f1)
    gzip -n -9 "$WORK/$1.tar"
    blob=$(add_blob "$WORK/$1.tar.gz")
    echo "$blob $diff_id"
}

# make_manifest ARCH LAYER...: config + OCI manifest; prints the manifest's "DIGEST SIZE".
make_manifest() {
    local arch=$1 diff_ids="" layers="" d s id cfg
    shift
    local l
    for l in "$@"; do
        read -r d s id <<<"$l"
        diff_ids+="${diff_ids:+,}\"$id\""
        layers+="${layers:+,}{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"$d\",\"size\":$s}"
    done
    printf '{"architecture":"%s","os":"linux","config":{"Cmd":["/bin/sh"]},"rootfs":{"type":"layers","diff_ids":[%s]}}' \
        "$arch" "$diff_ids" >"$WORK/config.json"
    cfg=$(add_blob "$WORK/config.json")
    read -r d s <<<"$cfg"
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[%s]}' \
        "$d" "$s" "$layers" >"$WORK/manifest.json"
    add_blob "$WORK/manifest.json"
}

# tag_in_layout NAME MEDIATYPE "DIGEST SIZE": lists the manifest in index.json under NAME.
tag_in_layout() {
    local d s
    read -r d s <<<"$3"
    INDEX_ENTRIES+=("{\"mediaType\":\"$2\",\"digest\":\"$d\",\"size\":$s,\"annotations\":{\"org.opencontainers.image.ref.name\":\"$1\"}}")
}

OCI_MANIFEST=application/vnd.oci.image.manifest.v1+json
OCI_INDEX=application/vnd.oci.image.index.v1+json

say "building three small images (shared base layer; demo-c is a linux/amd64 + linux/arm64 index)"
base=$(make_layer base "airlock demo base layer")
tag_in_layout demo-a $OCI_MANIFEST "$(make_manifest amd64 "$base" "$(make_layer a 'this is demo-a')")"
tag_in_layout demo-b $OCI_MANIFEST "$(make_manifest amd64 "$base" "$(make_layer b 'this is demo-b')")"
c_amd64=$(make_manifest amd64 "$base" "$(make_layer c-amd64 'this is demo-c for amd64')")
c_arm64=$(make_manifest arm64 "$base" "$(make_layer c-arm64 'this is demo-c for arm64')")
read -r da sa <<<"$c_amd64"
read -r db sb <<<"$c_arm64"
printf '{"schemaVersion":2,"mediaType":"%s","manifests":[{"mediaType":"%s","digest":"%s","size":%s,"platform":{"architecture":"amd64","os":"linux"}},{"mediaType":"%s","digest":"%s","size":%s,"platform":{"architecture":"arm64","os":"linux","variant":"v8"}}]}' \
    "$OCI_INDEX" "$OCI_MANIFEST" "$da" "$sa" "$OCI_MANIFEST" "$db" "$sb" >"$WORK/index-c.json"
tag_in_layout demo-c $OCI_INDEX "$(add_blob "$WORK/index-c.json")"
(IFS=,; printf '{"schemaVersion":2,"mediaType":"%s","manifests":[%s]}' "$OCI_INDEX" "${INDEX_ENTRIES[*]}") >"$LAYOUT/index.json"

say "pushing them to $SRC/demo/{demo-a,demo-b,demo-c}:$TAG with skopeo"
for n in "${NAMES[@]}"; do
    skopeo --insecure-policy copy --quiet --all --preserve-digests --dest-tls-verify=false \
        "oci:$LAYOUT:$n" "docker://$SRC/demo/$n:$TAG"
    echo "  $SRC/demo/$n:$TAG"
done

# --- 5. airlock -----------------------------------------------------------------------------------
# stdin is /dev/null so that nothing can stop at a prompt; the loopback registries speak plain HTTP,
# which airlock (like docker) assumes for 127.0.0.0/8 and localhost.
BUNDLE=$WORK/demo.tar.zst

say "airlock export ${NAMES[*]} --registry $SRC --repository demo --tag $TAG -o $BUNDLE"
"$AIRLOCK" export "${NAMES[@]}" --registry "$SRC" --repository demo --tag "$TAG" -o "$BUNDLE" </dev/null
ls -l "$BUNDLE"

say "airlock inspect $BUNDLE"
"$AIRLOCK" inspect "$BUNDLE" </dev/null

say "airlock verify $BUNDLE"
"$AIRLOCK" verify "$BUNDLE" </dev/null

say "the bundle is a plain .tar.zst"
# The whole listing first: under pipefail, `| head` would kill tar with SIGPIPE (exit 141).
listing=$(zstd -dc <"$BUNDLE" | tar -t)
printf '%s\n' "$listing" | sed -n 1,8p

say "airlock import $BUNDLE --registry $DST --repository mirror"
"$AIRLOCK" import "$BUNDLE" --registry "$DST" --repository mirror </dev/null

# --- 6. same digests on both sides ----------------------------------------------------------------
say "manifest digests, source vs target (skopeo inspect --raw | sha256sum)"
differ=0
for n in "${NAMES[@]}"; do
    src_digest=sha256:$(skopeo inspect --raw --tls-verify=false "docker://$SRC/demo/$n:$TAG" | sha256sum | cut -d' ' -f1)
    dst_digest=sha256:$(skopeo inspect --raw --tls-verify=false "docker://$DST/mirror/$n:$TAG" | sha256sum | cut -d' ' -f1)
    if [[ $src_digest == "$dst_digest" ]]; then verdict=same; else verdict=DIFFERENT; differ=$((differ + 1)); fi
    printf '  %-40s %s\n  %-40s %s  %s\n' "$SRC/demo/$n:$TAG" "$src_digest" "$DST/mirror/$n:$TAG" "$dst_digest" "$verdict"
done
if ((differ)); then
    die "$differ image(s) changed digest on the way"
fi
say "done: ${#NAMES[@]} images moved through one bundle, digests preserved"
