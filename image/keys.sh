# shellcheck shell=bash
# image/keys.sh — sourced by build.sh and image/build-image.sh (with $repo set to the
# repository): which release keys an image trusts, and whether one of them is the development
# key (issue 16).
#
# The development key's private half is committed (firmware-config/update-dev-key.pk8) so that
# anyone can build and sign test releases; an image trusting its public half
# (firmware-config/update-dev-key.pub) installs releases anyone can sign. A default build does
# that and is marked for it; a --production build refuses to start without its own keys.
#
# It must never print key material other than file names.

# True when keys file $1 lists the development public key. Lines are compared as the node
# reads them (surrounding white space trimmed; the base64 of a 32-byte key has one spelling),
# so a comment or a second key beside it changes nothing.
trusts_development_key() {
    local development
    development=$(tr -d '[:space:]' <"$repo/firmware-config/update-dev-key.pub")
    sed 's/^[[:space:]]*//; s/[[:space:]]*$//' "$1" | grep -Fxq -- "$development"
}

# The keys a keys file lists (lines that are neither blank nor comments).
listed_keys() {
    sed 's/^[[:space:]]*//; s/[[:space:]]*$//' "$1" | grep -v -e '^$' -e '^#' || true
}

# For --production: exits 64, naming every problem, unless MXNODE_RELEASE_KEY and
# MXNODE_UPDATE_KEYS are both set and name files, the keys file lists at least one key and not
# the development key, and the signing key is not the development key. $1 names the caller in
# the messages. Runs before anything is built.
check_production_keys() {
    local who=$1 missing=() problems=() problem
    [ -n "${MXNODE_RELEASE_KEY:-}" ] || missing+=(MXNODE_RELEASE_KEY)
    [ -n "${MXNODE_UPDATE_KEYS:-}" ] || missing+=(MXNODE_UPDATE_KEYS)
    if [ "${#missing[@]}" -gt 0 ]; then
        {
            echo "$who --production: not set: ${missing[*]}."
            echo "  A production image trusts only your release keys and its release is signed with"
            echo "  your own private key: set MXNODE_UPDATE_KEYS to a keys file (the format of"
            echo "  firmware-config/update-keys.txt, public keys from \`mxnode release keygen\`) and"
            echo "  MXNODE_RELEASE_KEY to the private key (.pk8) that signs releases. Nothing was built."
        } >&2
        exit 64
    fi
    if [ ! -f "$MXNODE_UPDATE_KEYS" ]; then
        problems+=("MXNODE_UPDATE_KEYS: no file $MXNODE_UPDATE_KEYS")
    elif trusts_development_key "$MXNODE_UPDATE_KEYS"; then
        problems+=("MXNODE_UPDATE_KEYS ($MXNODE_UPDATE_KEYS) lists the development key (firmware-config/update-dev-key.pub), whose private half is in the repository")
    elif [ -z "$(listed_keys "$MXNODE_UPDATE_KEYS")" ]; then
        problems+=("MXNODE_UPDATE_KEYS ($MXNODE_UPDATE_KEYS) lists no key: the image could never be updated")
    fi
    if [ ! -f "$MXNODE_RELEASE_KEY" ]; then
        problems+=("MXNODE_RELEASE_KEY: no file $MXNODE_RELEASE_KEY")
    elif cmp -s "$MXNODE_RELEASE_KEY" "$repo/firmware-config/update-dev-key.pk8"; then
        problems+=("MXNODE_RELEASE_KEY ($MXNODE_RELEASE_KEY) is the development key, whose private half is in the repository")
    fi
    if [ "${#problems[@]}" -gt 0 ]; then
        echo "$who --production: refusing to build:" >&2
        for problem in "${problems[@]}"; do
            echo "  $problem" >&2
        done
        exit 64
    fi
}

# The warning a build that trusts the development key prints (at its start and its end).
development_keys_warning() {
    cat >&2 <<'WARNING'
################################################################################################
# WARNING: DEVELOPMENT KEYS. This image trusts the development release key, whose private half
# is in the repository (firmware-config/update-dev-key.pk8): ANYONE can sign a release that it
# installs. It is marked as such: VARIANT_ID=development in os-release, `development_keys` in
# image.json, the node's status, console, compliance report and metrics. Never ship it. A
# product is built with `./build.sh image --production`, MXNODE_UPDATE_KEYS and
# MXNODE_RELEASE_KEY set (README: "Production images").
################################################################################################
WARNING
}
