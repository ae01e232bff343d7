# Shared helpers for images/debian.sh and tests/testhost/testhost.sh: read the
# host's Debian mirror, run commands in a root tree, install packages into it
# without starting services, slim it, make it container-ready. Sourced, not run.
#
# All functions print progress on stderr only.

# The host's Debian mirror for SUITE: the first `deb` source (deb822
# `/etc/apt/sources.list.d/*.sources` or one-line `*.list` / sources.list)
# whose suites contain SUITE exactly and whose components contain main.
# BERTH_DEBIAN_MIRROR overrides it. Fails if there is none.
debian_mirror() {
    local suite=$1 f uri
    if [ -n "${BERTH_DEBIAN_MIRROR:-}" ]; then echo "$BERTH_DEBIAN_MIRROR"; return 0; fi
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        case $f in
        *.sources)
            # deb822: blank-line separated stanzas of "Key: value" fields.
            uri=$(awk -v suite="$suite" '
                function flush() {
                    if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " suite " ") &&
                        (" " comps " ") ~ / main / && uris != "" && found == "") {
                        split(uris, u, " "); found = u[1]
                    }
                    types = ""; suites = ""; comps = ""; uris = ""
                }
                /^[ \t]*#/ { next }
                /^[ \t]*$/ { flush(); next }
                {
                    key = tolower($1); sub(/:$/, "", key)
                    val = $0; sub(/^[^:]*:[ \t]*/, "", val)
                    if (key == "types") types = val
                    else if (key == "uris") uris = val
                    else if (key == "suites") suites = val
                    else if (key == "components") comps = val
                }
                END { flush(); if (found != "") print found }' "$f")
            ;;
        *)
            # One-line format: deb [options] URI SUITE COMPONENT...
            uri=$(awk -v suite="$suite" '
                $1 == "deb" {
                    i = 2
                    if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                    if ($(i + 1) != suite) next
                    for (j = i + 2; j <= NF; j++) if ($j == "main") { print $i; exit }
                }' "$f")
            ;;
        esac
        if [ -n "$uri" ]; then echo "${uri%/}"; return 0; fi
    done
    echo "debian_mirror: no 'deb' source for suite $suite with component main in /etc/apt/sources.list{,.d/*}; set BERTH_DEBIAN_MIRROR" >&2
    return 1
}

# Run CMD... chrooted in ROOT, in private mount and PID namespaces with a fresh
# /proc: whatever a maintainer script mounts or leaves running dies with them.
root_run() {
    local root=$1; shift
    unshare --mount --pid --fork --mount-proc="$root/proc" \
        chroot "$root" /usr/bin/env -i \
        PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 \
        DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true "$@"
}

# Exclude docs (but copyrights), man pages, info and locales from every later
# dpkg unpack in ROOT, and delete what earlier unpacks put there.
debian_nodoc() {
    local root=$1
    mkdir -p "$root/etc/dpkg/dpkg.cfg.d"
    cat > "$root/etc/dpkg/dpkg.cfg.d/01-berth-nodoc" <<'EOF'
# berth test image: no documentation, man pages or translations.
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/groff/*
EOF
    cat > "$root/etc/apt/apt.conf.d/01-berth" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
EOF
    find "$root/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete 2>/dev/null || true
    find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
    local d
    for d in man info lintian linda groff; do
        [ -d "$root/usr/share/$d" ] && find "$root/usr/share/$d" -mindepth 1 -delete
    done
    [ -d "$root/usr/share/locale" ] && find "$root/usr/share/locale" -mindepth 1 ! -name locale.alias -delete
    return 0
}

# Install PACKAGES into ROOT with apt (no recommends), never starting a
# service: a policy-rc.d denies invoke-rc.d for the duration.
debian_apt_install() {
    local root=$1; shift
    cp -L /etc/resolv.conf "$root/etc/resolv.conf"
    printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
    chmod 755 "$root/usr/sbin/policy-rc.d"
    root_run "$root" apt-get -q update >&2
    root_run "$root" apt-get -q -y install --no-install-recommends "$@" >&2
    rm -f "$root/usr/sbin/policy-rc.d"
}

# Make ROOT a clean container image: empty /etc/machine-id (berth writes one
# per pod; systemd then runs with a transient id), plain-file resolv.conf,
# a hostname, and no apt caches, lists or logs.
debian_finish() {
    local root=$1 hostname=$2
    : > "$root/etc/machine-id"
    chmod 444 "$root/etc/machine-id"
    rm -f "$root/var/lib/dbus/machine-id"
    rm -f "$root/etc/resolv.conf"
    printf '# berth writes the pod'"'"'s resolver configuration here.\n' > "$root/etc/resolv.conf"
    echo "$hostname" > "$root/etc/hostname"
    rm -rf "$root/var/lib/apt/lists/"* "$root/var/cache/apt/"*.bin "$root/var/cache/apt/archives/"*.deb \
        "$root/var/cache/apt/archives/partial/"* "$root/var/cache/debconf/"*-old "$root/var/lib/dpkg/"*-old
    find "$root/var/log" -type f -delete
    rm -rf "$root/tmp/"* "$root/var/tmp/"* "$root/root/.bash_history"
}

# Remove a half-built tree: unmount anything still mounted below it first
# (deepest first), then delete without crossing file systems.
debian_discard() {
    local dir=$1 m
    [ -n "$dir" ] && [ -d "$dir" ] || return 0
    for m in $(awk -v d="$dir" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r); do
        umount -l "$m" 2>/dev/null || true
    done
    rm -rf --one-file-system "$dir"
}
