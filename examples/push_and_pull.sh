#!/usr/bin/env bash
# Push a real OpenStreetMap extract to a wogit registry, tag it, set its metadata,
# pull the tag back as a tarball and check every digest and the metadata.
#
#   examples/push_and_pull.sh [REGISTRY_URL] [TAG]
#
# REGISTRY_URL defaults to $WOGIT_REGISTRY, then http://127.0.0.1:8080 (`wogit serve`).
# TAG defaults to v1.  Re-runs pass: an upload that exists answers 409, and an
# existing tag is accepted when it holds exactly this map and config.
# Needs only bash, curl, sha256sum and tar.  Exits non-zero on any mismatch.
set -euo pipefail

REGISTRY="${1:-${WOGIT_REGISTRY:-http://127.0.0.1:8080}}"
REGISTRY="${REGISTRY%/}"
TAG="${2:-v1}"
REPOSITORY="osm"
MAP="test-area"
METADATA="source=openstreetmap license=ODbL-1.0 region=test-area"

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MAP_FILE="$HERE/maps/test.osm.pbf"
CONFIG_FILE="$HERE/maps/test.yaml"

fail() {
    echo "FAILED: $*" >&2
    exit 1
}

for tool in curl sha256sum tar; do
    command -v "$tool" >/dev/null || fail "this script needs '$tool' on the PATH"
done
[[ -f "$MAP_FILE" && -f "$CONFIG_FILE" ]] || fail "missing $MAP_FILE or $CONFIG_FILE"
[[ "$TAG" =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$ ]] ||
    fail "invalid tag '$TAG': a tag matches [A-Za-z0-9][A-Za-z0-9._-]{0,127}"
[[ "$REGISTRY" =~ ^https?:// ]] || fail "invalid registry URL '$REGISTRY' (e.g. http://127.0.0.1:8080)"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/wogit-example.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

# request METHOD PATH [curl options...]: sets STATUS, writes the body to $OUT
# (default $WORK/body) and the headers to $WORK/headers.
request() {
    local method="$1" path="$2"
    shift 2
    local rc=0
    STATUS="$(curl -sS -X "$method" -o "${OUT:-$WORK/body}" -D "$WORK/headers" -w '%{http_code}' \
        "$@" "$REGISTRY$path")" || rc=$?
    case "$rc" in
        0) ;;
        7) fail "$method $REGISTRY$path: cannot connect (is the registry running? start it with: wogit serve)" ;;
        *) fail "$method $REGISTRY$path: curl failed with exit code $rc" ;;
    esac
}

# header NAME: the value of a header of the last response (the final one after a 100 Continue).
header() {
    local value
    value="$(tr -d '\r' <"$WORK/headers" | grep -i "^$1:" | tail -n 1 | cut -d: -f2-)" || true
    value="${value#"${value%%[![:space:]]*}"}"
    printf '%s' "$value"
}

expect_status() { # what, allowed statuses...
    local what="$1"
    shift
    local allowed
    for allowed in "$@"; do
        [[ "$STATUS" == "$allowed" ]] && return 0
    done
    fail "$what: HTTP $STATUS (expected $*): $(head -c 500 "${OUT:-$WORK/body}")"
}

digest_of() { echo "sha256:$(sha256sum "$1" | cut -d' ' -f1)"; }

same() { # what, expected, got
    [[ "$2" == "$3" ]] || fail "$1: expected '$2', got '$3'"
}

echo "registry: $REGISTRY"
request GET /v1
expect_status "GET /v1 (readiness)" 200

# -- push the map and its config ----------------------------------------------
MAP_DIGEST="$(digest_of "$MAP_FILE")"
CONFIG_DIGEST="$(digest_of "$CONFIG_FILE")"

# The digest is announced, so the registry verifies the bytes it receives.
request PUT /blobs/upload -T "$MAP_FILE" -H "Wo-Map-Digest: $MAP_DIGEST" \
    -H "Content-Type: application/octet-stream"
expect_status "upload map" 201 409
same "Wo-Map-Digest of the map upload" "$MAP_DIGEST" "$(header Wo-Map-Digest)"
echo "map:      $MAP_DIGEST ($STATUS $([[ $STATUS == 201 ]] && echo uploaded || echo 'already uploaded'))"

request PUT /configs/upload -T "$CONFIG_FILE" -H "Wo-Config-Digest: $CONFIG_DIGEST" \
    -H "Content-Type: text/plain; charset=utf-8"
expect_status "upload config" 201 409
same "Wo-Config-Digest of the config upload" "$CONFIG_DIGEST" "$(header Wo-Config-Digest)"
echo "config:   $CONFIG_DIGEST ($STATUS $([[ $STATUS == 201 ]] && echo uploaded || echo 'already uploaded'))"

# -- tag them -------------------------------------------------------------------
TAG_PATH="/$REPOSITORY/$MAP/$TAG"
request PUT "$TAG_PATH" -H "Content-Type: application/json" \
    --data-binary "{\"map_digest\": \"$MAP_DIGEST\", \"config_digest\": \"$CONFIG_DIGEST\"}"
expect_status "tag $TAG_PATH" 201 409
TAG_STATUS="$STATUS"
# On 409 the tag already existed: it is accepted below only if it holds the same map and config.

# -- metadata -------------------------------------------------------------------
request PUT "/$REPOSITORY/$MAP/metadata" -H "Content-Type: text/plain; charset=utf-8" --data-binary "$METADATA"
expect_status "set metadata" 200
for pair in $METADATA; do
    key="${pair%%=*}"
    request GET "/$REPOSITORY/$MAP/metadata/$key"
    expect_status "GET metadata key $key" 200
    same "metadata key $key" "${pair#*=}" "$(cat "$WORK/body")"
done

# -- pull the tarball and check everything ----------------------------------------
TARBALL="$WORK/$REPOSITORY-$MAP-$TAG.tar.gz"
OUT="$TARBALL" request GET "$TAG_PATH"
expect_status "GET $TAG_PATH" 200
same "Content-Type of the tarball" "application/gzip" "$(header Content-Type)"
PULLED_MAP_HEADER="$(header Wo-Map-Digest)"
PULLED_CONFIG_HEADER="$(header Wo-Config-Digest)"

MEMBERS="$(tar -tzf "$TARBALL" | tr '\n' ' ')" || fail "the tarball is not a valid tar.gz"
same "tarball members" "map metadata config " "$MEMBERS"
mkdir "$WORK/unpacked"
tar -xzf "$TARBALL" -C "$WORK/unpacked"
for member in map metadata config; do
    [[ -f "$WORK/unpacked/$member" && ! -L "$WORK/unpacked/$member" ]] ||
        fail "tarball member '$member' is not a regular file"
done
PULLED_MAP="$(digest_of "$WORK/unpacked/map")"
PULLED_CONFIG="$(digest_of "$WORK/unpacked/config")"

if [[ "$TAG_STATUS" == 409 && ("$PULLED_MAP" != "$MAP_DIGEST" || "$PULLED_CONFIG" != "$CONFIG_DIGEST") ]]; then
    fail "tag $TAG_PATH already exists with other content (map $PULLED_MAP, config $PULLED_CONFIG);" \
        "tags are immutable: pick another tag, e.g. $0 $REGISTRY ${TAG}-2"
fi
same "sha256 of the pulled map" "$MAP_DIGEST" "$PULLED_MAP"
same "sha256 of the pulled config" "$CONFIG_DIGEST" "$PULLED_CONFIG"
same "Wo-Map-Digest of the pull" "$MAP_DIGEST" "$PULLED_MAP_HEADER"
same "Wo-Config-Digest of the pull" "$CONFIG_DIGEST" "$PULLED_CONFIG_HEADER"
cmp -s "$MAP_FILE" "$WORK/unpacked/map" || fail "the pulled map differs from $MAP_FILE"
cmp -s "$CONFIG_FILE" "$WORK/unpacked/config" || fail "the pulled config differs from $CONFIG_FILE"

# metadata: one key=value line per key, sorted by key, newline-terminated.
EXPECTED_METADATA="$(printf '%s\n' $METADATA | LC_ALL=C sort)"$'\n'
ACTUAL_METADATA="$(cat "$WORK/unpacked/metadata"; echo x)"
ACTUAL_METADATA="${ACTUAL_METADATA%x}"
if [[ "$ACTUAL_METADATA" != "$EXPECTED_METADATA" ]]; then
    fail "metadata file in the tarball: expected
$EXPECTED_METADATA--- got:
$ACTUAL_METADATA---"
fi

if [[ "$TAG_STATUS" == 201 ]]; then
    echo "tag:      ${TAG_PATH#/} (201 created)"
else
    echo "tag:      ${TAG_PATH#/} (409 already existed, same map and config)"
fi
mapfile -t PAIRS <"$WORK/unpacked/metadata"
echo "metadata: ${PAIRS[*]}"
echo "pulled:   $(basename "$TARBALL") ($(wc -c <"$TARBALL") bytes: ${MEMBERS% })"
echo "OK: map, config and metadata match what was pushed"
