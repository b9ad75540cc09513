#!/bin/sh
# Installed by `bookend install-exitrd`; run by bookend-exitrd.service. Brings the exitrd
# the booted initrd vouched for into /run/initramfs, with coreutils and
# systemd-tmpfiles only (no Python, nothing of bookend). On any failure it removes
# /run/initramfs/shutdown and says why, so systemd powers off the normal way.
#
#   load-exitrd check   at boot: check the installed tree against the digest where it
#                       lies, and remember what its entries were (device, inode, size,
#                       times, mode, link target) in /run
#   load-exitrd         at shutdown: if every entry is still what the check saw, copy
#                       the tree (one systemd-tmpfiles run) into the empty
#                       /run/initramfs the check made; else copy it aside, check the
#                       copy in full and move it there
#
# Checking at boot takes the hashing off the shutdown's path: a file cannot change
# without a new change time or inode, which only root can forge (by setting the clock),
# and root can rewrite the digest in /run just as well.
set -u
store=${BOOKEND_EXITRD_STORE:-/usr/lib/bookend/exitrd}
target=${BOOKEND_EXITRD_TARGET:-/run/initramfs}
booted=${BOOKEND_EXITRD_DIGEST:-/run/bookend/exitrd.sha256}
checked=${BOOKEND_EXITRD_CHECKED:-${booted%/*}/exitrd.checked}
# Every program run costs 40 to 200 ms under emulation: the shell's builtins do the rest
# (the clock from /proc/uptime, in hundredths of a second).
read -r started rest < /proc/uptime
staging=
digest=
nl='
'

say() {
    echo "bookend: exitrd: $*" >&2
}

# What a failure means: at shutdown no exitrd; at boot only a full check at shutdown.
outcome="refusing it; shutdown goes on without an exitrd"
refuse() {
    say "$*: $outcome"
    [ -z "$staging" ] || rm -rf "$staging"
    exit 1
}

# digest and from: the exitrd to take, and who named it.
pick_digest() {
    if [ -e "$booted" ]; then
        from="the initrd that booted ($booted)"
        # systemd-tmpfiles writes the digest without a newline: read then says end of file.
        { read -r digest rest || [ -n "$digest" ]; } < "$booted" || refuse "cannot read $booted"
    elif [ -e "$store/default" ]; then
        from="$store/default (the initrd that booted named none)"
        { read -r digest rest || [ -n "$digest" ]; } < "$store/default" ||
            refuse "cannot read $store/default"
    else
        refuse "no digest: neither $booted nor $store/default exists"
    fi
    case $digest in
        *[!0-9a-f]*) refuse "$from: '$digest' is not a SHA-256" ;;
    esac
    [ ${#digest} -eq 64 ] || refuse "$from: '$digest' is not a SHA-256"
    [ -d "$store/$digest" ] || refuse "$store/$digest, named by $from: not installed"
}

# entries and count: the listing's paths in DIR/paths, in its order (builtins only).
# What they name is checked (stat of them must print the listing the sums name), and
# the tree must hold no entry more.
read_paths() {
    entries=
    count=0
    while read -r path || [ -n "$path" ]; do
        entries=$entries$path$nl
        count=$((count + 1))
    done < "$1/paths" || refuse "$1/paths: cannot read"
}

# Check the tree in the current directory (a copy of, or the installed, $tree) against
# SUMS, writing the digest's line to DIGEST_LINE. One sha256sum run: the sums against
# the digest, every file against the sums, and the listing (type, permission bits,
# path, link target) on standard input against the sums. The tree is 0700 as
# installed, and the listing checks it is.
check_tree() {
    echo "$digest  $2" > "$1" || refuse "cannot write $1"
    set -- "$1" "$2" $(du -al .) || refuse "cannot list $tree"
    [ $(($# - 2)) -eq "$count" ] ||
        refuse "$tree has $(($# - 2)) entries, its digest $digest names $count"
    LC_ALL=C QUOTING_STYLE=literal stat -c '%f %N' -- $entries |
        sha256sum -c --quiet --strict "$1" "$2" >&2 ||
        refuse "$tree differs from the digest $digest from $from"
}

# What the check remembers of each entry in the current directory: a change to a file
# or a directory moves its change time (or, replaced, its inode).
fingerprint() {
    LC_ALL=C QUOTING_STYLE=literal stat -c '%d %i %s %f %.9Y %.9Z %N' -- $entries
}

# seen, entries and count: the fingerprint and listing the check at boot left, if it
# checked this digest. The record is shell, read with `.`: the shell's read takes a
# file a byte (a system call) at a time, which under emulation costs more than the
# rest of the shell's work. Only root can write it, as it can the digest beside it.
read_seen() {
    seen=
    checked_digest=
    [ -e "$checked" ] || return 0
    . "$checked"
    [ "$checked_digest" = "$digest" ] || return 0
    seen=$checked_seen entries=$checked_entries count=$checked_count
}

# The record read_seen reads; a name with a ' in it (none of bookend's) would end
# its quoting, so the shutdown then checks in full.
write_record() {
    case $entries$1 in
        *"'"*) refuse "a name in $tree has a ' in it" ;;
    esac
    {
        echo "checked_digest=$digest checked_count=$count"
        echo "checked_entries='$entries'"
        echo "checked_seen='$1'"
    } > "$checked" || refuse "cannot write $checked"
}

elapsed_ms() {
    IFS=" " read -r now rest < /proc/uptime
    echo $(((${now%.*}${now#*.} - ${started%.*}${started#*.}) * 10))
}

# At boot: the installed tree checked where it lies, its fingerprint taken before and
# after, so a change while it was read shows.
check_at_boot() {
    outcome="not checked at boot; the shutdown checks it in full"
    [ -d "${checked%/*}" ] || mkdir -p "${checked%/*}" || refuse "cannot create ${checked%/*}"
    rm -f "$checked"
    read_paths "$store/$digest"
    cd "$tree" || refuse "$tree: cannot enter"
    before=$(fingerprint) || refuse "cannot stat $tree"
    staging=$checked.digest  # sha256sum reads the digest's line from a file
    check_tree "$staging" "$store/$digest/sums"
    after=$(fingerprint) || refuse "cannot stat $tree"
    [ "$before" = "$after" ] || refuse "$tree changed while it was checked"
    write_record "$after"
    rm -f "$staging"
    # The shutdown copies straight into it, with no directory to make or move then.
    [ -e "$target" ] || mkdir -m 0700 "$target" || refuse "cannot create $target"
    echo "bookend: exitrd $digest (from $from): $count entries checked in $(elapsed_ms) ms"
}

# Whether $1 is a directory with nothing in it (the shell's globbing only).
empty_dir() {
    [ -d "$1" ] && [ ! -L "$1" ] || return 1
    set +f
    for entry in "$1"/* "$1"/.[!.]* "$1"/..?*; do
        if [ -e "$entry" ] || [ -L "$entry" ]; then
            set -f
            return 1
        fi
    done
    set -f
}

# The tree's top-level entries, /shutdown last: a copy stopped half-way (the unit's stop
# timed out) has no /shutdown, so systemd powers off the normal way.
shutdown_last() {
    set +f
    for entry in "$tree"/* "$tree"/.[!.]* "$tree"/..?*; do
        if [ "$entry" != "$tree/shutdown" ] && { [ -e "$entry" ] || [ -L "$entry" ]; }; then
            echo "$entry"
        fi
    done
    set -f
    echo "$tree/shutdown"
}

# Copy each SOURCE to its DEST (the arguments: DEST SOURCE ...), in order, with
# systemd-tmpfiles' C lines: it copies with sendfile, one pass through memory where cp
# reads and writes (two), and is what every systemd system has. A DEST that exists and
# is not empty is left as it is, so the callers copy only into new or empty places.
copy_each() {
    lines=
    while [ $# -ge 2 ]; do
        # A tmpfiles line is split at blanks and expands %: names must have neither.
        case $1$2 in
            *[!A-Za-z0-9._+/-]*) refuse "$2: a name systemd-tmpfiles cannot copy" ;;
        esac
        lines=$lines"C $1 - - - - $2$nl"
        shift 2
    done
    systemd-tmpfiles --create - <<EOF
$lines
EOF
}

# copy_each's arguments for the tree's top-level entries into DIR, /shutdown last.
into() {
    for entry in $(shutdown_last); do
        echo "$1/${entry##*/}$nl$entry"
    done
}

mode=${1:-load}
# A stale /shutdown goes first, whatever is refused below.
if [ "$mode" != check ] && { [ -e "$target/shutdown" ] || [ -L "$target/shutdown" ]; }; then
    rm -f "$target/shutdown" || refuse "cannot remove $target/shutdown"
fi
pick_digest
IFS=$nl
set -f
tree=$store/$digest/tree
if [ "$mode" = check ]; then
    check_at_boot
    exit 0
fi

staging=${target%/*}/.initramfs-$$
[ ! -e "$staging" ] || rm -rf "$staging" || refuse "cannot remove $staging"
read_seen
now=
[ -z "$seen" ] || now=$(cd "$tree" && fingerprint)
# Unchanged since the check: a copy of the tree is all there is to do, straight into the
# directory the check made when nothing else has put files there since.
if [ -n "$now" ] && [ "$now" = "$seen" ] && empty_dir "$target"; then
    staging=$target copy=$target
    copy_each $(into "$target") || refuse "$tree: cannot copy"
    how="copied to $target (checked at boot, unchanged since)"
elif [ -n "$now" ] && [ "$now" = "$seen" ]; then
    copy=$staging
    copy_each "$copy" "$tree" || refuse "$tree: cannot copy"
    how="copied to $target, replacing what was there (checked at boot, unchanged since)"
else
    [ -z "$seen" ] || say "$tree changed since the check at boot: checking it in full"
    # One copy brings the sums, the paths and the tree into a directory of our own (/run
    # is root's): what is checked is this copy, and only it is used.
    copy=$staging/tree
    copy_each "$staging" "$store/$digest" || refuse "$store/$digest: cannot copy"
    read_paths "$staging"
    cd "$copy" || refuse "$copy: cannot enter"
    check_tree "$staging/digest" "$staging/sums"
    how="copied to $target and checked"
fi
[ -x "$copy/shutdown" ] || refuse "$tree: no executable /shutdown"
if [ "$copy" != "$target" ]; then
    # -T: onto, never into, the empty directory a check at boot still running when the
    # shutdown came (the unit starts after multi-user.target) may make meanwhile.
    cd / && { [ ! -e "$target" ] || rm -rf "$target"; } && mv -T "$copy" "$target" ||
        refuse "cannot move the copy to $target"
    [ "$copy" = "$staging" ] || rm -rf "$staging"
fi
echo "bookend: exitrd $digest (from $from): $count entries $how in $(elapsed_ms) ms"
