#!/usr/bin/env bash
# airlock vs. skopeo + tar + zstd, on local registries. Run by hand (not in CI), as root on Debian
# (it installs docker-registry, skopeo, zstd and time when they are missing):
#
#   sudo bash benches/bench.sh                  # full run: a 1 GiB corpus and a 500-image corpus
#   sudo BENCH_SMALL=1 bash benches/bench.sh    # quick run: 10 MiB layer, 20 images over 5 repositories
#
# Corpora, pushed into a source registry from a generated OCI image layout with skopeo:
#   big   one image with a 1 GiB layer of random (incompressible) data, three small images and a
#         two-platform index, all sharing a base layer;
#   many  500 small images: 50 repositories x 10 tags, a shared base layer and a small unique layer
#         each.
#   scale 10,000 images: 1,000 repositories x 10 tags shaped like `many`, written straight into
#         the source registry's storage (benches/gen_registry.py); run it with
#         BENCH_CORPORA=scale BENCH_TOOLS=airlock. Rows give milliseconds per image.
# For each corpus, each step is timed with /usr/bin/time (wall seconds, peak RSS of the process tree,
# CPU seconds), and the registries' CPU seconds over the same step are read from /proc (on a 2-core
# machine the registry's own CPU bounds the many-small-images corpora):
#   export  airlock export -f LIST (cold cache)  vs  skopeo copy each image into one OCI layout,
#           then tar | zstd -T0 -3
#   import  airlock import                       vs  zstd -d | tar -x, then skopeo copy each image
#   verify  airlock verify                       vs  zstd -d > /dev/null (the floor: decompression)
#   next    airlock export --since (the first bundle) of the corpus with one layer of one image
#           changed: the incremental bundle's size is listed with the others
#   link    (big only) airlock export -j 4 through benches/throttle.py, a proxy holding every
#           connection to BENCH_LINK_MIB MiB/s, against its floor: four connections busy all along
#   pull x8 8 clients (one keep-alive curl each) pull every blob of the corpus from `airlock serve`
#           (straight from the compressed bundle) and from the distribution registry the last
#           import filled (uncompressed on disk); serve's peak RSS gets a row of its own
#   import --trusted-key   the same import of the (signed) bundle into a fresh registry: one pass;
#                  the unsigned and signed imports run twice, in both orders (ABBA)
#   fetch limit    4 parallel `curl -o FILE` of every unique blob of the corpus, then `sync`
#   upload limit   4 parallel monolithic uploads (`curl -T`, POST then PUT ?digest=) of those files
#                  into a fresh registry
#   push limit     benches/raw_push.py: BENCH_JOBS threads push the unpacked bundle into a fresh
#                  registry with the requests airlock's import makes there (each blob once per
#                  repository, mounts across repositories, manifests, tags), nothing more
# The limits run before the imports. After the first import every manifest digest at its target
# is compared with the source (and at skopeo's after its import). Every registry a step filled
# is emptied after it but for the last import's, so that each step starts with the same data in
# the page cache (below, at the imports).
# A third corpus, *compressed* (BENCH_CORPORA=compressed; not in the default run): four gzip -6
# layers of real files (tar streams of /usr/lib and /usr/share, cut to size; ~300 MiB of gzip,
# 30 MiB with BENCH_SMALL=1). Its export row adds CPU seconds (user+sys) per GiB of blobs, with
# AIRLOCK_BEFORE=BINARY a row for an older airlock too (before/after comparison).
# skopeo runs one image at a time (its oci: layout is not safe for concurrent writers).
#
# Environment:
#   BENCH_SMALL=1         shrink the corpora (see above)
#   BENCH_CORPORA         corpora to run, default "big many" (also: scale)
#   BENCH_SCALE_REPOS     repositories of the scale corpus (x 10 tags), default 1000
#   BENCH_SCALE_LAYERS    unique layers of each scale image, default 1 (9 makes 10,000
#                         images of 100,001 blobs)
#   BENCH_TOOLS           tools to run, default "airlock skopeo" (e.g. BENCH_TOOLS=skopeo)
#   BENCH_JOBS            airlock -j, default 8
#   BENCH_LINK_MIB        per-connection rate of the throttled link, default 20
#   BENCH_WORKDIR         where registries, bundles and layouts go (needs ~10 GiB for the full
#                         run); default a new directory under /var/tmp
#   BENCH_KEEP=1          keep the work directory
#   AIRLOCK               airlock binary, default target/release/airlock (built if missing)
#   AIRLOCK_BEFORE        optional older airlock binary: extra export, inspect and verify rows
#                         on each corpus (it reads the bundle this airlock wrote)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CORPORA=${BENCH_CORPORA:-big many}
TOOLS=${BENCH_TOOLS:-airlock skopeo}
JOBS=${BENCH_JOBS:-8}
SCALE_LAYERS=${BENCH_SCALE_LAYERS:-1}
if [[ ${BENCH_SMALL:-0} == 1 ]]; then
    BIG_MIB=10 MANY_REPOS=5 MANY_TAGS=4 COMPRESSED_MIB=30 SCALE_REPOS=${BENCH_SCALE_REPOS:-20}
else
    BIG_MIB=1024 MANY_REPOS=50 MANY_TAGS=10 COMPRESSED_MIB=300 SCALE_REPOS=${BENCH_SCALE_REPOS:-1000}
fi

say() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'bench: %s\n' "$*" >&2; exit 1; }
uses() { [[ " $TOOLS " == *" $1 "* ]]; }

unset SOURCE_DOCKER_REGISTRY SOURCE_DOCKER_REPOSITORY SOURCE_DOCKER_USERNAME SOURCE_DOCKER_PASSWORD \
      SOURCE_DOCKER_TAG TARGET_DOCKER_REGISTRY TARGET_DOCKER_REPOSITORY TARGET_DOCKER_USERNAME \
      TARGET_DOCKER_PASSWORD TARGET_DOCKER_TAG

# --- tools ---------------------------------------------------------------------------------------
missing=()
command -v docker-registry >/dev/null || missing+=(docker-registry)
command -v skopeo >/dev/null || missing+=(skopeo)
command -v zstd >/dev/null || missing+=(zstd)
[[ -x /usr/bin/time ]] || missing+=(time)
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3)
if ((${#missing[@]})); then
    [[ $(id -u) == 0 ]] || die "missing ${missing[*]}; run as root or install them"
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y "${missing[@]}"
fi

AIRLOCK=${AIRLOCK:-${CARGO_TARGET_DIR:-$REPO/target}/release/airlock}
if uses airlock && [[ ! -x $AIRLOCK ]]; then
    cargo=$(command -v cargo || echo "$HOME/.cargo/bin/cargo")
    [[ -x $cargo ]] || die "$AIRLOCK is missing and cargo was not found"
    say "building airlock"
    (cd "$REPO" && "$cargo" build --release --locked)
    [[ -x $AIRLOCK ]] || die "build did not produce $AIRLOCK"
fi

# --- work directory and registries -------------------------------------------------------------
if [[ -n ${BENCH_WORKDIR:-} ]]; then
    WORK=$BENCH_WORKDIR
    mkdir -p "$WORK"
else
    WORK=$(mktemp -d /var/tmp/airlock-bench.XXXXXX)
fi
[[ $WORK != *:* ]] || die "the work directory must not contain ':' (skopeo oci:DIR:REF)"
mkdir -p "$WORK/logs"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ ${BENCH_KEEP:-0} == 1 ]]; then
        rm -rf "$WORK/trash"
        echo "bench: work directory kept: $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

# discard PATH...: removes what a step left behind. Deleting thousands of files makes ext4's inode
# allocator skip the freed inodes for a minute or more (recently_deleted() in fs/ext4/ialloc.c),
# so the next step that creates thousands of files (airlock's cache, skopeo's layouts) pays for
# the previous one's clean-up: about half of airlock's CPU (1.2 of 2.1 s) and up to a second of
# wall on the 1,000-image export, measured with perf. Directories of more than 1,000 files are
# moved aside instead and removed when the bench ends; everything else is removed at once.
mkdir -p "$WORK/trash"
discard() {
    local p
    for p in "$@"; do
        [[ -e $p ]] || continue
        if [[ -d $p ]] && (($(find "$p" -type f | head -n 1001 | wc -l) > 1000)); then
            mv "$p" "$(mktemp -d "$WORK/trash/XXXXXX")/"
        else
            rm -rf "$p"
        fi
    done
}

# empty_registry NAME: removes what the registry NAME holds (it keeps running, empty).
empty_registry() { discard "$WORK/registry-$1/data/docker"; }

# free_port: a port nothing listens on, below the kernel's ephemeral range (32768 and up here),
# where an outgoing connection could take it between this check and the bind.
free_port() {
    local p _
    for _ in $(seq 1 100); do
        p=$((20000 + RANDOM % 12000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

registry_up() {
    local status
    exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
    printf 'GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
    IFS= read -r status <&3 || status=""
    exec 3<&-
    [[ $status == *" 200"* ]]
}

REG_PIDS=()
# registries_cpu: CPU seconds (user+sys) the registries of this run have used so far.
registries_cpu() {
    local ticks=0 p
    for p in "${REG_PIDS[@]}"; do
        if [[ -r /proc/$p/stat ]]; then
            ticks=$((ticks + $(awk '{print $14 + $15}' "/proc/$p/stat")))
        fi
    done
    awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", t / hz }'
}

# start_registry NAME: docker-registry with filesystem storage under $WORK/registry-NAME; sets REG_PORT.
# A port taken between the check and the bind is given up for another, up to five times.
start_registry() {
    local name=$1 dir=$WORK/registry-$1 pid _ try
    mkdir -p "$dir/data"
    for try in 1 2 3 4 5; do
        REG_PORT=$(free_port) || die "no free port"
        start_registry_on "$name" "$dir" && return 0
        grep -q "address already in use" "$dir/registry.log" || break
        say "registry $name: port $REG_PORT was taken (try $try), trying another"
    done
    cat "$dir/registry.log" >&2
    die "registry $name did not start"
}

# start_registry_on NAME DIR: one attempt on $REG_PORT; fails if the registry exits.
start_registry_on() {
    local name=$1 dir=$2 pid _
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
    REG_PIDS+=("$pid")
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || return 1
        if registry_up "$REG_PORT" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    die "registry $name did not answer on 127.0.0.1:$REG_PORT"
}

say "starting registries in $WORK"
start_registry source
SRC=127.0.0.1:$REG_PORT
start_registry airlock
DST_AIRLOCK=127.0.0.1:$REG_PORT
start_registry skopeo
DST_SKOPEO=127.0.0.1:$REG_PORT
start_registry signed
DST_SIGNED=127.0.0.1:$REG_PORT
start_registry signed2
DST_SIGNED2=127.0.0.1:$REG_PORT
start_registry airlock2
DST_AIRLOCK2=127.0.0.1:$REG_PORT
start_registry raw
DST_RAW=127.0.0.1:$REG_PORT
start_registry push
DST_PUSH=127.0.0.1:$REG_PORT
echo "source $SRC, airlock target $DST_AIRLOCK, skopeo target $DST_SKOPEO" >&2

# --- OCI image layout generator ------------------------------------------------------------------
OCI_MANIFEST=application/vnd.oci.image.manifest.v1+json
OCI_INDEX=application/vnd.oci.image.index.v1+json
LAYOUT=""
SCRATCH=""
INDEX_ENTRIES=()

layout_begin() {
    LAYOUT=$1
    SCRATCH=$LAYOUT.scratch
    INDEX_ENTRIES=()
    mkdir -p "$LAYOUT/blobs/sha256" "$SCRATCH"
    printf '{"imageLayoutVersion":"1.0.0"}' >"$LAYOUT/oci-layout"
}

layout_end() {
    (IFS=,; printf '{"schemaVersion":2,"mediaType":"%s","manifests":[%s]}' "$OCI_INDEX" "${INDEX_ENTRIES[*]}") \
        >"$LAYOUT/index.json"
    rm -rf "$SCRATCH"
}

# add_blob FILE: moves FILE into the layout, prints "sha256:HEX SIZE".
add_blob() {
    local hex size
    hex=$(sha256sum "$1" | cut -d' ' -f1)
    size=$(stat -c %s "$1")
    mv "$1" "$LAYOUT/blobs/sha256/$hex"
    echo "sha256:$hex $size"
}

# make_layer NAME RANDOM_BYTES: a gzip layer holding NAME.txt and NAME.bin (RANDOM_BYTES of
# /dev/urandom); prints "DIGEST SIZE DIFF_ID".
make_layer() {
    local src=$SCRATCH/src-$1 diff_id blob
    mkdir -p "$src"
    printf '%s\n' "$1" >"$src/$1.txt"
    head -c "$2" /dev/urandom >"$src/$1.bin"
    tar -C "$src" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf "$SCRATCH/$1.tar" .
    rm -rf "$src"
    diff_id=sha256:$(sha256sum "$SCRATCH/$1.tar" | cut -d' ' -f1)
    gzip -n -1 "$SCRATCH/$1.tar"
    blob=$(add_blob "$SCRATCH/$1.tar.gz")
    echo "$blob $diff_id"
}

# make_manifest ARCH LAYER...: config + OCI manifest; prints the manifest's "DIGEST SIZE".
make_manifest() {
    local arch=$1 diff_ids="" layers="" l d s id cfg
    shift
    for l in "$@"; do
        read -r d s id <<<"$l"
        diff_ids+="${diff_ids:+,}\"$id\""
        layers+="${layers:+,}{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"$d\",\"size\":$s}"
    done
    printf '{"architecture":"%s","os":"linux","config":{"Cmd":["/bin/sh"]},"rootfs":{"type":"layers","diff_ids":[%s]}}' \
        "$arch" "$diff_ids" >"$SCRATCH/config.json"
    cfg=$(add_blob "$SCRATCH/config.json")
    read -r d s <<<"$cfg"
    printf '{"schemaVersion":2,"mediaType":"%s","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[%s]}' \
        "$OCI_MANIFEST" "$d" "$s" "$layers" >"$SCRATCH/manifest.json"
    add_blob "$SCRATCH/manifest.json"
}

# make_index MANIFEST_AMD64 MANIFEST_ARM64: a two-platform OCI index; prints "DIGEST SIZE".
make_index() {
    local da sa db sb
    read -r da sa <<<"$1"
    read -r db sb <<<"$2"
    printf '{"schemaVersion":2,"mediaType":"%s","manifests":[{"mediaType":"%s","digest":"%s","size":%s,"platform":{"architecture":"amd64","os":"linux"}},{"mediaType":"%s","digest":"%s","size":%s,"platform":{"architecture":"arm64","os":"linux","variant":"v8"}}]}' \
        "$OCI_INDEX" "$OCI_MANIFEST" "$da" "$sa" "$OCI_MANIFEST" "$db" "$sb" >"$SCRATCH/index.json"
    add_blob "$SCRATCH/index.json"
}

# tag_in_layout REF MEDIATYPE "DIGEST SIZE"
tag_in_layout() {
    local d s
    read -r d s <<<"$3"
    INDEX_ENTRIES+=("{\"mediaType\":\"$2\",\"digest\":\"$d\",\"size\":$s,\"annotations\":{\"org.opencontainers.image.ref.name\":\"$1\"}}")
}

# --- corpora -------------------------------------------------------------------------------------
# Each corpus is an OCI layout whose ref names are repository paths (big/huge:1), and a list file
# $WORK/CORPUS.list of those paths; the source references are $SRC/PATH.
build_big() {
    local base
    layout_begin "$WORK/gen-big"
    base=$(make_layer base $((2 << 20)))
    say "big: generating a ${BIG_MIB} MiB random layer"
    tag_in_layout big/huge:1 $OCI_MANIFEST "$(make_manifest amd64 "$base" "$(make_layer huge $((BIG_MIB << 20)))")"
    # "Next month": small-1 with one layer changed (for the incremental export).
    tag_in_layout big/small-1:2 $OCI_MANIFEST "$(make_manifest amd64 "$base" "$(make_layer "small-1-v2" $((1 << 20)))")"
    for n in 1 2 3; do
        tag_in_layout "big/small-$n:1" $OCI_MANIFEST "$(make_manifest amd64 "$base" "$(make_layer "small-$n" $((1 << 20)))")"
    done
    tag_in_layout big/multi:1 $OCI_INDEX "$(make_index \
        "$(make_manifest amd64 "$base" "$(make_layer multi-amd64 $((1 << 20)))")" \
        "$(make_manifest arm64 "$base" "$(make_layer multi-arm64 $((1 << 20)))")")"
    layout_end
    printf '%s\n' big/huge:1 big/small-1:1 big/small-2:1 big/small-3:1 big/multi:1 >"$WORK/big.list"
    printf '%s\n' big/huge:1 big/small-1:2 big/small-2:1 big/small-3:1 big/multi:1 >"$WORK/big.next.list"
}

build_many() {
    local base r t path
    layout_begin "$WORK/gen-many"
    base=$(make_layer base $((2 << 20)))
    : >"$WORK/many.list"
    for ((r = 1; r <= MANY_REPOS; r++)); do
        for ((t = 1; t <= MANY_TAGS; t++)); do
            path=$(printf 'many/r%02d:t%02d' "$r" "$t")
            tag_in_layout "$path" $OCI_MANIFEST \
                "$(make_manifest amd64 "$base" "$(make_layer "u-$r-$t" 16384)")"
            echo "$path" >>"$WORK/many.list"
        done
    done
    # "Next month": r01:t01 with its unique layer changed.
    tag_in_layout many/r01:t01-next $OCI_MANIFEST "$(make_manifest amd64 "$base" "$(make_layer "u-next" 16384)")"
    sed 's|^many/r01:t01$|many/r01:t01-next|' "$WORK/many.list" >"$WORK/many.next.list"
    layout_end
}

# The scale corpus (SCALE_REPOS repositories x 10 tags, a shared 2 MiB base layer and 16 KiB
# of unique layers each, in SCALE_LAYERS layers) is written straight into the source registry's storage by
# benches/gen_registry.py: pushing 10,000 images one by one would take longer than the bench.
build_scale() {
    say "scale: writing $SCALE_REPOS x 10 images ($SCALE_LAYERS unique layers each) into the source registry's storage"
    python3 "$REPO/benches/gen_registry.py" "$WORK/registry-source/data" "$SCALE_REPOS" 10 "$WORK/scale.list" "$SCALE_LAYERS"
    head -n 1 "$WORK/scale.list" >"$WORK/scale.next.list"
}

# scale_rows: per-image milliseconds of the scale corpus's export and import.
scale_rows() {
    local n step wall
    n=$(wc -l <"$WORK/scale.list")
    for step in export import verify inspect; do
        wall=$(printf '%s\n' "${ROWS[@]}" | awk -F'|' -v s="$step" '$1 == "scale" && $2 == s && $3 == "airlock" {print $4}')
        [[ $wall =~ ^[0-9.]+$ ]] && ROWS+=("scale|$step|ms/image|$(awk -v w="$wall" -v n="$n" 'BEGIN { printf "%.2f", 1000 * w / n }')|-|-")
    done
}

# make_real_layer NAME MIB DIR...: a gzip -6 layer of a tar stream of real files under DIRs, cut
# to MIB MiB before compression (a registry does not look inside); prints "DIGEST SIZE DIFF_ID".
make_real_layer() {
    local name=$1 mib=$2 diff_id blob
    shift 2
    tar -cf - --sort=name "$@" 2>/dev/null | head -c $((mib << 20)) >"$SCRATCH/$name.tar" || true
    diff_id=sha256:$(sha256sum "$SCRATCH/$name.tar" | cut -d' ' -f1)
    gzip -n -6 "$SCRATCH/$name.tar"
    blob=$(add_blob "$SCRATCH/$name.tar.gz")
    echo "$blob $diff_id"
}

build_compressed() {
    local each=$((COMPRESSED_MIB * 3 / 4)) l1 l2 l3 l4   # tar MiB per layer; gzip gives ~1/3 back
    layout_begin "$WORK/gen-compressed"
    say "compressed: gzip -6 of four ${each} MiB tar streams of /usr/lib and /usr/share"
    l1=$(make_real_layer lib $each /usr/lib)
    l2=$(make_real_layer share $each /usr/share)
    l3=$(make_real_layer lib-r $each /usr/lib/x86_64-linux-gnu /usr/lib/python3*)
    l4=$(make_real_layer share-r $each /usr/share/doc /usr/share/locale /usr/share/man /usr/share/i18n)
    tag_in_layout comp/app:1 $OCI_MANIFEST "$(make_manifest amd64 "$l1" "$l2")"
    tag_in_layout comp/app:2 $OCI_MANIFEST "$(make_manifest amd64 "$l1" "$l3" "$l4")"
    tag_in_layout comp/app:3 $OCI_MANIFEST "$(make_manifest amd64 "$l1" "$l2" "$l4")"
    layout_end
    printf '%s\n' comp/app:1 comp/app:2 >"$WORK/compressed.list"
    printf '%s\n' comp/app:1 comp/app:3 >"$WORK/compressed.next.list"
}

# push_corpus CORPUS: skopeo copy every image of the generated layout into the source registry.
push_corpus() {
    local c=$1
    sort -u "$WORK/$c.list" "$WORK/$c.next.list" >"$WORK/$c.push.list"
    say "$c: pushing $(wc -l <"$WORK/$c.push.list") images to $SRC"
    # shellcheck disable=SC2016
    xargs -P 2 -I{} skopeo --insecure-policy copy --quiet --all --preserve-digests --dest-tls-verify=false \
        "oci:$WORK/gen-$c:{}" "docker://$SRC/{}" <"$WORK/$c.push.list"
    discard "$WORK/gen-$c"
}

# --- measurement ---------------------------------------------------------------------------------
ROWS=()   # corpus|step|tool|wall|rss MiB|digests
FAILED=0

# measure CORPUS STEP TOOL CMD...: runs CMD under /usr/bin/time, output to a log; appends a row.
LAST_CPU=""
LAST_WALL=""
measure() {
    local corpus=$1 step=$2 tool=$3 tf log wall rss user sys reg0 regcpu
    LAST_CPU="" LAST_WALL=""
    shift 3
    tf=$WORK/logs/$corpus-$step-${tool// /_}.time
    log=$WORK/logs/$corpus-$step-${tool// /_}.log
    say "$corpus: $step with $tool"
    # Every step starts with nothing left to write back: the 1 GiB that an import leaves in the
    # page cache would otherwise be written out during the next step and charged to it.
    sync
    reg0=$(registries_cpu)
    if /usr/bin/time -f '%e %M %U %S' -o "$tf" "$@" >"$log" 2>&1; then
        read -r wall rss user sys < <(tail -n 1 "$tf")
        ROWS+=("$corpus|$step|$tool|$wall|$((rss / 1024))|-")
        LAST_CPU=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }')
        LAST_WALL=$wall
        regcpu=$(awk -v a="$reg0" -v b="$(registries_cpu)" 'BEGIN { printf "%.2f", b - a }')
        SPLIT_ROWS+=("$(printf '%-8s %-14s %-10s %8s wall s  %8s CPU s  the registries %8s CPU s' \
            "$corpus" "$step" "$tool" "$wall" "$LAST_CPU" "$regcpu")")
        echo "   $wall s, $((rss / 1024)) MiB, CPU $LAST_CPU s (the registries: $regcpu s)" >&2
    else
        echo "   FAILED; last lines of $log:" >&2
        tail -n 20 "$log" | sed 's/^/   | /' >&2
        ROWS+=("$corpus|$step|$tool|FAILED|-|-")
        FAILED=$((FAILED + 1))
    fi
}

# manifest_digests REGISTRY LIST OUT: "PATH sha256:..." for every path (MISSING when absent).
manifest_digests() {
    local reg=$1
    # shellcheck disable=SC2016
    xargs -P 4 -I{} bash -c 'd=$(skopeo inspect --raw --tls-verify=false "docker://$1/$2" 2>/dev/null | sha256sum | cut -d" " -f1) \
        && [[ $d != e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 ]] \
        && echo "$2 sha256:$d" || echo "$2 MISSING"' _ "$reg" {} <"$2" | sort >"$3"
}

# preserved SOURCE_FILE TARGET_FILE: "kept/total" (images whose digest is unchanged).
preserved() {
    local total kept
    total=$(wc -l <"$1")
    kept=$(comm -12 "$1" "$2" | grep -vc ' MISSING$' || true)
    echo "$kept/$total"
}

set_digest_cell() {   # set_digest_cell CORPUS TOOL VALUE: fills the import row of TOOL
    local i
    for i in "${!ROWS[@]}"; do
        if [[ ${ROWS[$i]} == "$1|import|$2|"* ]]; then
            ROWS[i]=${ROWS[$i]%|*}"|$3"
        fi
    done
}

# serve_vs_registry CORPUS: 8 clients (one curl each, keep-alive) pull every blob of the corpus,
# from `airlock serve` over the compressed bundle and from the distribution registry that the
# last import filled (the same blobs, uncompressed on disk). Rows: wall seconds of the 8 clients;
# serve's own peak RSS (VmHWM) in its own row.
serve_vs_registry() {
    local c=$1 bundle=$WORK/$1-airlock.tar.zst port pid i
    zstd -dc "$bundle" | tar -xO bundle.json >"$WORK/$c.bundle.json"
    python3 - "$WORK/$c.bundle.json" >"$WORK/$c.blob-paths" <<'PY'
import json, sys
b = json.load(open(sys.argv[1]))
kinds = {x["digest"]: x["mediaType"] for x in b["blobs"]}
seen = set()
for img in b["images"]:
    repo = img["path"] if not img["namespace"] else img["namespace"] + "/" + img["path"]
    for d in img["blobs"]:
        mt = kinds.get(d, "")
        if "manifest" in mt or "index" in mt or (repo, d) in seen:
            continue
        seen.add((repo, d))
        print(f"/v2/{repo}/blobs/{d}")
PY
    port=$(free_port) || die "no free port"
    "$AIRLOCK" serve "$bundle" --listen "127.0.0.1:$port" -q &
    pid=$!
    PIDS+=("$pid")
    for i in $(seq 1 100); do registry_up "$port" 2>/dev/null && break; sleep 0.1; done
    for target in "airlock serve|127.0.0.1:$port" "distribution|$DST_AIRLOCK2"; do
        local name=${target%%|*} host=${target#*|}
        sed "s|^|url = http://$host|; s|\$|\noutput = /dev/null|" "$WORK/$c.blob-paths" >"$WORK/$c.curl-${name// /_}"
        measure "$c" "pull x8" "$name" bash -c "pids=(); for i in 1 2 3 4 5 6 7 8; do curl -sSf -K '$WORK/$c.curl-${name// /_}' & pids+=(\$!); done; fail=0; for p in \${pids[@]}; do wait \$p || fail=1; done; exit \$fail"
    done
    local hwm
    hwm=$(awk '/VmHWM/ {print int($2 / 1024)}' "/proc/$pid/status" 2>/dev/null || echo "-")
    ROWS+=("$c|serve|peak RSS|-|$hwm|-")
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# throttled_export CORPUS: export through a proxy that holds every connection to
# $BENCH_LINK_MIB MiB/s (as CDNs and long-distance links do), with -j 4; the floor is four
# streams busy all along: the corpus's bytes / (4 x the per-connection rate).
throttled_export() {
    local c=$1 port pid rate total floor
    rate=$((${BENCH_LINK_MIB:-20} << 20))
    port=$(free_port) || die "no free port"
    python3 "$REPO/benches/throttle.py" "$port" "$SRC" "$rate" &
    pid=$!
    PIDS+=("$pid")
    for _ in $(seq 1 50); do registry_up "$port" 2>/dev/null && break; sleep 0.1; done
    sed "s|^|127.0.0.1:$port/|" "$WORK/$c.list" >"$WORK/$c.link.refs"
    measure "$c" "link" airlock "$AIRLOCK" export -f "$WORK/$c.link.refs" \
        -o "$WORK/$c-link.tar.zst" --plain-http -j 4 --cache-dir "$WORK/cache-$c-link"
    if [[ -f $WORK/$c-link.tar.zst ]]; then
        total=$(zstd -dc "$WORK/$c-link.tar.zst" | tar -xO bundle.json | python3 -c 'import json,sys; print(json.load(sys.stdin)["totalSize"])')
        floor=$(awk -v t="$total" -v r="$rate" 'BEGIN { printf "%.1f", t / (4 * r) }')
        ROWS+=("$c|link|floor 4x${BENCH_LINK_MIB:-20}MiB/s|$floor|-|-")
    fi
    discard "$WORK/cache-$c-link" "$WORK/$c-link.tar.zst"
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# unique_blobs CORPUS: "REPO DIGEST" of every unique blob (not manifests) of the exported bundle.
unique_blobs() {
    zstd -dc "$WORK/$1-airlock.tar.zst" | tar -xO bundle.json | python3 -c '
import json, sys
b = json.load(sys.stdin)
kinds = {x["digest"]: x["mediaType"] for x in b["blobs"]}
seen = set()
for img in b["images"]:
    repo = img["path"] if not img["namespace"] else img["namespace"] + "/" + img["path"]
    for d in img["blobs"]:
        mt = kinds.get(d, "")
        if "manifest" in mt or "index" in mt or d in seen:
            continue
        seen.add(d)
        print(repo, d)
'
}

# raw_limits CORPUS: what the disk and the registry allow, in the same run: 4 parallel
# `curl -o FILE` of every unique blob then `sync` (export's floor), 4 parallel monolithic
# `curl -T` uploads of those files into a fresh registry (import's floor for large blobs), and
# the raw pusher's import of the whole bundle (import's floor for many small images).
raw_limits() {
    local c=$1 dir=$WORK/raw-$1
    mkdir -p "$dir"
    unique_blobs "$c" >"$WORK/$c.unique"
    measure "$c" "fetch limit" "curl x4" bash -c "xargs -P 4 -L 1 bash -c 'curl -sSf -o \"$dir/\${1#sha256:}\" \"http://$SRC/v2/\$0/blobs/\$1\"' <'$WORK/$c.unique' && sync"
    # shellcheck disable=SC2016
    measure "$c" "upload limit" "curl x4" bash -c "xargs -P 4 -L 1 bash -c 'loc=\$(curl -sSf -o /dev/null -D - -X POST \"http://$DST_RAW/v2/\$0/blobs/uploads/\" | tr -d \"\\r\" | sed -n \"s/^[Ll]ocation: //p\"); case \$loc in http*) ;; *) loc=http://$DST_RAW\$loc ;; esac; case \$loc in *\\?*) sep=\"&\" ;; *) sep=\"?\" ;; esac; curl -sSf -o /dev/null -T \"$dir/\${1#sha256:}\" -H \"Content-Type: application/octet-stream\" \"\$loc\${sep}digest=\$1\"' <'$WORK/$c.unique'"
    empty_registry raw
    discard "$dir"
    # The raw pusher: the same requests as airlock's import into an empty registry, $JOBS threads.
    mkdir -p "$WORK/layout-$c"
    zstd -dc "$WORK/$c-airlock.tar.zst" | tar -x -C "$WORK/layout-$c"
    measure "$c" "push limit" "raw x$JOBS" python3 "$REPO/benches/raw_push.py" "$WORK/layout-$c" "$DST_PUSH" "$JOBS"
    empty_registry push
    discard "$WORK/layout-$c"
}

run_corpus() {
    local c=$1 list=$WORK/$1.list refs=$WORK/$1.refs
    "build_$c"
    [[ $c == scale ]] || push_corpus "$c"
    sed "s|^|$SRC/|" "$list" >"$refs"   # full source references, one per line
    sed "s|^|$SRC/|" "$WORK/$c.next.list" >"$WORK/$c.next.refs"
    du -sh "$WORK/registry-source/data" >&2

    if uses airlock; then
        if [[ -n ${AIRLOCK_BEFORE:-} ]]; then
            measure "$c" export "before" "$AIRLOCK_BEFORE" export -f "$refs" -o "$WORK/$c-before.tar.zst" \
                --plain-http -j "$JOBS" --cache-dir "$WORK/cache-$c" --json
            cpu_row "$c" before "$WORK/$c-before.tar.zst"
            discard "$WORK/cache-$c" "$WORK/$c-before.tar.zst"
        fi
        [[ -f $WORK/bench.key ]] || "$AIRLOCK" keygen -o "$WORK/bench" --no-password >/dev/null 2>&1
        # Signed: the bundle is the same bytes; the signature lies beside it.
        measure "$c" export airlock "$AIRLOCK" export -f "$refs" -o "$WORK/$c-airlock.tar.zst" \
            --plain-http -j "$JOBS" --cache-dir "$WORK/cache-$c" --sign "$WORK/bench.key" --json
        cpu_row "$c" airlock "$WORK/$c-airlock.tar.zst"
        discard "$WORK/cache-$c"
        [[ $c == big ]] && throttled_export "$c"
        # The next month: one layer of one image changed; only new blobs travel.
        if [[ -f $WORK/$c-airlock.tar.zst ]]; then
            measure "$c" "next" airlock "$AIRLOCK" export -f "$WORK/$c.next.refs" \
                --since "$WORK/$c-airlock.tar.zst" -o "$WORK/$c-airlock-next-month.tar.zst" \
                --plain-http -j "$JOBS" --cache-dir "$WORK/cache-$c"
            discard "$WORK/cache-$c"
            [[ -f $WORK/$c-airlock-next-month.tar.zst ]] &&
                SIZES+=("$c $(basename "$WORK/$c-airlock-next-month.tar.zst") $(stat -c %s "$WORK/$c-airlock-next-month.tar.zst")")
            rm -f "$WORK/$c-airlock-next-month.tar.zst"
        fi
    fi
    if uses skopeo; then
        cat >"$WORK/$c-skopeo-export.sh" <<EOF
set -euo pipefail
while read -r ref; do
    skopeo --insecure-policy copy --quiet --all --preserve-digests --src-tls-verify=false \\
        "docker://\$ref" "oci:$WORK/$c-skopeo-layout:\$ref"
done <"$refs"
tar -C "$WORK/$c-skopeo-layout" -cf - . | zstd -q -T0 -3 >"$WORK/$c-skopeo.tar.zst"
EOF
        measure "$c" export skopeo bash "$WORK/$c-skopeo-export.sh"
        discard "$WORK/$c-skopeo-layout"
    fi

    if uses airlock && [[ ! -f $WORK/$c-airlock.tar.zst ]]; then
        ROWS+=("$c|import|airlock|skipped|-|-")
    elif uses airlock; then
        # The limits first, then unsigned, signed, signed, unsigned, each into a fresh registry
        # (the ratio is taken over both orders), and each registry emptied once read (for the
        # first import, its digests compared with the source's) but the last, which pull x8
        # reads: every step that writes the corpus into a registry starts with the same data in
        # the page cache. With each import's GiB left there, the registries' system CPU for the
        # same import grew from 1.1 to 3.5 s over four imports in a row (big, measured from
        # /proc); emptied after each, it stayed at 1.1-1.2 s.
        raw_limits "$c"
        measure "$c" import airlock "$AIRLOCK" import "$WORK/$c-airlock.tar.zst" \
            --registry "$DST_AIRLOCK" --plain-http -j "$JOBS"
        say "$c: comparing manifest digests with the source"
        manifest_digests "$SRC" "$list" "$WORK/$c.digests-source"
        manifest_digests "$DST_AIRLOCK" "$list" "$WORK/$c.digests-airlock"
        set_digest_cell "$c" airlock "$(preserved "$WORK/$c.digests-source" "$WORK/$c.digests-airlock")"
        empty_registry airlock
        measure "$c" "import signed" airlock "$AIRLOCK" import "$WORK/$c-airlock.tar.zst" \
            --registry "$DST_SIGNED" --plain-http -j "$JOBS" --trusted-key "$WORK/bench.pub"
        empty_registry signed
        measure "$c" "import signed 2" airlock "$AIRLOCK" import "$WORK/$c-airlock.tar.zst" \
            --registry "$DST_SIGNED2" --plain-http -j "$JOBS" --trusted-key "$WORK/bench.pub"
        empty_registry signed2
        measure "$c" "import 2" airlock "$AIRLOCK" import "$WORK/$c-airlock.tar.zst" \
            --registry "$DST_AIRLOCK2" --plain-http -j "$JOBS"
    fi
    if uses skopeo && [[ ! -f $WORK/$c-skopeo.tar.zst ]]; then
        ROWS+=("$c|import|skopeo|skipped|-|-")
    elif uses skopeo; then
        cat >"$WORK/$c-skopeo-import.sh" <<EOF
set -euo pipefail
mkdir -p "$WORK/$c-skopeo-extract"
zstd -d <"$WORK/$c-skopeo.tar.zst" | tar -x -C "$WORK/$c-skopeo-extract"
while read -r ref; do
    skopeo --insecure-policy copy --quiet --all --preserve-digests --dest-tls-verify=false \\
        "oci:$WORK/$c-skopeo-extract:\$ref" "docker://$DST_SKOPEO/\${ref#*/}"
done <"$refs"
EOF
        measure "$c" import skopeo bash "$WORK/$c-skopeo-import.sh"
        discard "$WORK/$c-skopeo-extract"
    fi

    if uses airlock && [[ -f $WORK/$c-airlock.tar.zst ]]; then
        measure "$c" inspect airlock "$AIRLOCK" inspect "$WORK/$c-airlock.tar.zst"
        measure "$c" verify airlock "$AIRLOCK" verify "$WORK/$c-airlock.tar.zst"
        if [[ -n ${AIRLOCK_BEFORE:-} ]]; then
            # The same bundle read by the older airlock (the format has not changed).
            measure "$c" inspect before "$AIRLOCK_BEFORE" inspect "$WORK/$c-airlock.tar.zst"
            measure "$c" verify before "$AIRLOCK_BEFORE" verify "$WORK/$c-airlock.tar.zst"
        fi
        measure "$c" verify "zstd -d" bash -c "zstd -d <'$WORK/$c-airlock.tar.zst' >/dev/null"
        [[ $c == scale ]] || serve_vs_registry "$c"
    fi

    if uses skopeo; then
        say "$c: comparing skopeo's manifest digests with the source"
        [[ -f $WORK/$c.digests-source ]] || manifest_digests "$SRC" "$list" "$WORK/$c.digests-source"
        manifest_digests "$DST_SKOPEO" "$list" "$WORK/$c.digests-skopeo"
        set_digest_cell "$c" skopeo "$(preserved "$WORK/$c.digests-source" "$WORK/$c.digests-skopeo")"
    fi

    local f
    for f in "$WORK/$c-airlock.tar.zst" "$WORK/$c-skopeo.tar.zst"; do
        [[ -f $f ]] && SIZES+=("$c $(basename "$f") $(stat -c %s "$f")")
    done
    # Keep the disk in check: the bundles are not needed any more.
    rm -f "$WORK/$c-airlock.tar.zst" "$WORK/$c-skopeo.tar.zst"
}

# cpu_row CORPUS TOOL BUNDLE: after an export, CPU seconds (user+sys) per GiB of blobs and the
# ratio of blob bytes to bundle bytes, from the export's --json summary in its log.
CPU_ROWS=()
cpu_row() {
    local log=$WORK/logs/$1-export-$2.log total
    [[ -n $LAST_CPU && -f $3 ]] || return 0
    total=$(python3 -c 'import json,sys; t=sys.stdin.read(); print(json.JSONDecoder().raw_decode(t[t.index("{"):])[0]["totalSize"])' <"$log" 2>/dev/null || echo 0)
    [[ $total -gt 0 ]] || return 0
    CPU_ROWS+=("$(awk -v c="$1" -v t="$2" -v cpu="$LAST_CPU" -v w="$LAST_WALL" -v b="$total" -v z="$(stat -c %s "$3")" \
        'BEGIN { printf "%-10s export %-8s %7.2f CPU s %7.2f wall s %8.1f MiB of blobs  %6.2f CPU s/GiB  ratio %.2f", c, t, cpu, w, b / 1048576, cpu / (b / 1073741824), b / z }')")
}

SIZES=()
SPLIT_ROWS=()
for c in $CORPORA; do
    case $c in
        big | many | compressed) run_corpus "$c" ;;
        scale) run_corpus scale; scale_rows ;;
        *) die "unknown corpus $c (big, many, compressed, scale)" ;;
    esac
done

# --- report --------------------------------------------------------------------------------------
echo
if uses airlock; then echo "airlock: $("$AIRLOCK" --version 2>/dev/null | head -n 1 || true)"; fi
echo "$(skopeo --version); zstd $(zstd -V | grep -o 'v[0-9.]*' | head -n 1)"
echo "$(nproc) cores; airlock -j $JOBS; skopeo one image at a time; BENCH_SMALL=${BENCH_SMALL:-0}"
echo
{
    echo "corpus|step|tool|wall s|peak RSS MiB|digests preserved"
    printf '%s\n' "${ROWS[@]}"
} | awk -F'|' '{ printf "%-7s %-7s %-8s %8s %13s %18s\n", $1, $2, $3, $4, $5, $6 }'
echo
for s in "${SIZES[@]}"; do
    read -r c name bytes <<<"$s"
    printf '%-6s %-34s %10.2f MiB %14d bytes\n' "$c" "$name" "$(echo "$bytes" | awk '{print $1 / 1048576}')" "$bytes"
done
echo
printf '%s\n' "${CPU_ROWS[@]}"
echo
echo "CPU of each step: the tool's, and the registries' (every docker-registry of this run) over the same time"
printf '%s\n' "${SPLIT_ROWS[@]}"
# wall CORPUS STEP TOOL: the wall seconds of that row.
wall() { printf '%s\n' "${ROWS[@]}" | awk -F'|' -v c="$1" -v s="$2" -v t="$3" '$1 == c && $2 == s && $3 == t {print $4}'; }
for c in $CORPORA; do
    a=$(wall "$c" import airlock) p=$(wall "$c" "push limit" "raw x$JOBS") u=$(wall "$c" "upload limit" "curl x4")
    if [[ $a =~ ^[0-9.]+$ && $p =~ ^[0-9.]+$ && $u =~ ^[0-9.]+$ ]]; then
        awk -v c="$c" -v a="$a" -v p="$p" -v u="$u" 'BEGIN { if (p > 0 && u > 0) printf "%-6s import / push limit = %.2f, import / upload limit = %.2f\n", c, a / p, a / u }'
    fi
done
for c in $CORPORA; do
    a=$(wall "$c" import airlock) b=$(wall "$c" "import signed" airlock)
    b2=$(wall "$c" "import signed 2" airlock) a2=$(wall "$c" "import 2" airlock)
    if [[ $a =~ ^[0-9.]+$ && $b =~ ^[0-9.]+$ && $b2 =~ ^[0-9.]+$ && $a2 =~ ^[0-9.]+$ ]]; then
        awk -v c="$c" -v a="$a" -v b="$b" -v b2="$b2" -v a2="$a2" 'BEGIN { if (a > 0 && a2 > 0) printf "%-6s import signed / unsigned = %.2f (signed second %.2f, signed first %.2f)\n", c, (b + b2) / (a + a2), b / a, b2 / a2 }'
    fi
done
for c in $CORPORA; do
    a=$(printf '%s\n' "${ROWS[@]}" | awk -F'|' -v c="$c" '$1 == c && $2 == "verify" && $3 == "airlock" {print $4}')
    z=$(printf '%s\n' "${ROWS[@]}" | awk -F'|' -v c="$c" '$1 == c && $2 == "verify" && $3 == "zstd -d" {print $4}')
    if [[ $a =~ ^[0-9.]+$ && $z =~ ^[0-9.]+$ ]]; then
        awk -v c="$c" -v a="$a" -v z="$z" 'BEGIN { if (z > 0) printf "%-6s verify / zstd -d = %.2f\n", c, a / z; else printf "%-6s verify / zstd -d = n/a (too fast to time)\n", c }'
    fi
done
((FAILED == 0)) || { echo "bench: $FAILED step(s) failed, logs in $WORK/logs (BENCH_KEEP=1 keeps them)" >&2; exit 1; }
