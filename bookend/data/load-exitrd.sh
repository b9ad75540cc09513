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
[ ! -e "$staging" ] || rm -rf "$staging" || refuse "cannot remove $staging"
# One cp brings the sums, the paths and the tree into a directory of our own (/run is
# root's): what is checked below is this copy, and only it is used.
cp -RP --preserve=mode,links --no-preserve=ownership "$store/$digest" "$staging" ||
    refuse "$store/$digest: cannot copy"
cd "$staging/tree" || refuse "$staging/tree: cannot enter"
IFS='
'
set -f
# The listing's paths, in its order (builtins only). What they name is checked: stat of
# them must print the listing the sums name, and the copy holds no entry more.
entries=
count=0
while read -r path || [ -n "$path" ]; do
    entries=$entries$path$IFS
    count=$((count + 1))
done < ../paths || refuse "$staging/paths: cannot read"
set -- $(du -al .) || refuse "cannot list the copy"
[ $# -eq "$count" ] || refuse "$store/$digest/tree has $# entries, its digest $digest names $count"
echo "$digest  ../sums" > ../digest || refuse "cannot write $staging/digest"
# One sha256sum run: the sums against the digest, every file against the sums, and the
# listing (type, permission bits, path, link target) on standard input against the sums.
# The tree is 0700 as installed, and the listing checks it is.
LC_ALL=C QUOTING_STYLE=literal stat -c '%f %N' -- $entries |
    sha256sum -c --quiet --strict ../digest ../sums >&2 ||
    refuse "$store/$digest differs from the digest $digest from $from"
[ -x shutdown ] || refuse "$store/$digest/tree: no executable /shutdown"
cd / && { [ ! -e "$target" ] || rm -rf "$target"; } && mv "$staging/tree" "$target" ||
    refuse "cannot move the checked copy to $target"
rm -rf "$staging"
IFS=" " read -r now rest < /proc/uptime
ms=$(((${now%.*}${now#*.} - ${started%.*}${started#*.}) * 10))
echo "bookend: exitrd $digest (from $from): $count entries copied to $target and checked in $ms ms"
