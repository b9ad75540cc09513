#!/bin/sh
# Installed by `bookend install-exitrd`; run by bookend-exitrd.service. Copies the exitrd
# the booted initrd vouched for into /run/initramfs, checking every entry against its
# digest, with coreutils only (no Python, nothing of bookend). On any failure it removes
# /run/initramfs/shutdown and says why, so systemd powers off the normal way.
set -u
store=${BOOKEND_EXITRD_STORE:-/usr/lib/bookend/exitrd}
target=${BOOKEND_EXITRD_TARGET:-/run/initramfs}
booted=${BOOKEND_EXITRD_DIGEST:-/run/bookend/exitrd.sha256}
# Every program run costs about 0.2 s under emulation: the shell's builtins do the rest
# (the clock from /proc/uptime, in hundredths of a second).
read -r started rest < /proc/uptime
staging=
digest=

refuse() {
    echo "bookend: exitrd: $*: refusing it; shutdown goes on without an exitrd" >&2
    [ -z "$staging" ] || rm -rf "$staging"
    exit 1
}

[ ! -e "$target/shutdown" ] && [ ! -L "$target/shutdown" ] || rm -f "$target/shutdown" ||
    refuse "cannot remove $target/shutdown"
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

staging=${target%/*}/.initramfs-$$
mkdir -m 0700 "$staging" || { staging=; refuse "cannot make ${target%/*}/.initramfs-$$"; }
cp "$store/$digest/sums" "$staging/sums" || refuse "$store/$digest/sums: cannot copy"
echo "$digest  $staging/sums" | sha256sum -c --status ||
    refuse "$store/$digest/sums does not match the digest $digest from $from"
cp -RP --preserve=mode,links --no-preserve=ownership "$store/$digest/tree" "$staging/root" ||
    refuse "$store/$digest/tree: cannot copy"
# The tree is 0700 as installed, and the listing checks it is.
cd "$staging/root" || refuse "$staging/root: cannot enter"
# Every entry (type, permission bits, path, link target) as one listing on standard
# input, and every file's bytes: the sums name them all, and the digest names the sums.
IFS='
'
set -f
entries=$(du -al . | cut -f2- | LC_ALL=C sort) || refuse "cannot list the copy"
LC_ALL=C QUOTING_STYLE=literal stat -c '%f %N' -- $entries |
    sha256sum -c --quiet --strict ../sums >&2 ||
    refuse "$store/$digest/tree differs from the digest $digest from $from"
[ -x shutdown ] || refuse "$store/$digest/tree: no executable /shutdown"
cd / && { [ ! -e "$target" ] || rm -rf "$target"; } && mv "$staging/root" "$target" ||
    refuse "cannot move the checked copy to $target"
rm -rf "$staging"
set -- $entries
count=$#
IFS=" " read -r now rest < /proc/uptime
ms=$(((${now%.*}${now#*.} - ${started%.*}${started#*.}) * 10))
echo "bookend: exitrd $digest (from $from): $count entries copied to $target and checked in $ms ms"
