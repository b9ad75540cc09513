"""The manual: what each subcommand's --help says beyond its flags.

Kept apart from the parser so the flags stay readable in cli.py and the prose reads as
one document here. Each page has a description (what the command does and how), examples,
the files it reads or writes, and its exit status, as a man page would.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Page:
    description: str
    examples: tuple[tuple[str, str], ...]  # (command, what it does)
    files: tuple[str, ...] = ()
    exit_status: str = "0 on success, 1 when the command failed, 2 for bad input."

    def epilog(self) -> str:
        lines = ["examples:"]
        for command, meaning in self.examples:
            lines += [f"  {command}", f"      {meaning}"]
        if self.files:
            lines += ["", "files:", *(f"  {entry}" for entry in self.files)]
        lines += ["", "exit status:", f"  {self.exit_status}"]
        return "\n".join(lines)


_SETTINGS_NOTE = (
    "Every setting flag is also a key of the TOML configuration (`bookend config show` "
    "prints them all), read from the conf.d directories and --config before the flags; "
    "a flag replaces a single value and extends a list."
)


PAGES: dict[str, Page] = {
    "build": Page(
        "Build the initrd for one kernel and, beside it, the exitrd the system returns to at "
        "shutdown. The image holds systemd as PID 1, the files the enabled features ask "
        "for at their original paths with every library, interpreter and program they "
        "need, the kernel modules this machine's root storage needs (hostonly, the "
        "default) or every storage driver (--generic), their firmware and early "
        "microcode. The new image is checked as `bookend check` does and replaces the "
        "old one atomically, only when complete and only when it passes (or --force).\n\n"
        + _SETTINGS_NOTE,
        (
            ("bookend build", "initrd and exitrd for the newest kernel, in ./"),
            (
                "bookend build --kver 6.12.9 -o /boot/initrd.img-6.12.9",
                "replace the system's initrd for that kernel",
            ),
            ("bookend build --generic --compress xz", "an image that boots any machine"),
            (
                "bookend build --sysroot /srv/trixie --uki --cmdline 'root=LABEL=root rw'",
                "a unified kernel image made by the sysroot's ukify",
            ),
            (
                "bookend build --add-feature luks --add-keyfile /etc/keys/root.key",
                "unlock the root with an embedded key (the image is written 0600)",
            ),
        ),
        (
            "/usr/lib/bookend/conf.d/*.toml, /etc/bookend/conf.d/*.toml, "
            "/run/bookend/conf.d/*.toml: configuration",
            "/lib/modules/KVER: the kernel's modules; /lib/firmware: their firmware",
            "OUTPUT.sha256 beside the exitrd: its digest, checked when it is loaded",
        ),
    ),
    "boot-test": Page(
        "Boot a kernel with an initrd in QEMU against root disks and prove the image works: "
        "the real root reports a random token once its own default target is active (run "
        "by systemd's systemd.run=, from a small extra disk: nothing is installed in the "
        "root), then powers off, through the exitrd when the image carries one "
        "(--exitrd-in-initrd, which an image built here always has). The disks are "
        "attached as snapshots and never changed. KVM is used when a 5-second probe runs "
        "a guest under it (--accel auto), else software emulation. The summary gives the "
        "verdict and its reason, the kernel, initrd, root and shutdown phases in seconds, "
        "the initrd's slowest units (from the journal the root dumps to the console) and "
        "what the exitrd detached. Without IMAGE an image is built first, with the build "
        "options given, the exitrd carried inside and the virtio drivers added.\n\n"
        + _SETTINGS_NOTE,
        (
            (
                "bookend boot-test --disk root.img --append 'root=LABEL=root rw' --filesystem ext4",
                "build an image and boot it against root.img",
            ),
            (
                "bookend boot-test initrd.img --kernel vmlinuz --disk crypt.img "
                "--append 'rd.luks.uuid=UUID root=/dev/vg/root' --passphrase-file pw",
                "test an image on an encrypted root, typing its passphrase",
            ),
            (
                "bookend boot-test --disk root.img --json --timeline boot.svg",
                "the report as JSON, and a picture of the boot",
            ),
        ),
        exit_status="0 when the root reached its default target and the shutdown was clean "
        "(through the exitrd, when the image carries one); 1 otherwise; 2 for bad input "
        "(no kernel, a file that is no disk image, no QEMU).",
    ),
    "plan": Page(
        "Print what `bookend build` would put in the image, without building it: the "
        "features and what each asks for, the kernel modules and why. --closure prints "
        "every entry of the initrd as the build writes it (the exitrd's digest and, with "
        "--exitrd-in-initrd, its tree included) with its type and reason; --why PATH "
        "prints the chain of reasons that "
        "pulls PATH in. --detect prints only what hostonly detection finds on this machine "
        "(modules and why, filesystems, devices, storage kinds, the network interfaces a "
        "network root uses), as the image records it, whatever the features need.\n\n"
        + _SETTINGS_NOTE,
        (
            ("bookend plan", "the features, programs, units and modules requested"),
            ("bookend plan --closure | grep firmware", "which firmware files would go in"),
            ("bookend plan --why /usr/sbin/cryptsetup", "who wants it"),
            ("bookend plan --detect", "what hostonly mode finds this machine's root on"),
        ),
        exit_status="0 on success, 1 when --why names a file the image would not hold, "
        "2 for bad input.",
    ),
    "features": Page(
        "List the features bookend knows, each with what it is for; those marked with '*' "
        "are on by default. Others are switched on with --add-feature NAME or by what "
        "hostonly detection finds (LUKS, LVM, MD RAID, btrfs under the root; an NBD, iSCSI "
        "or NFS root, which brings network too).",
        (("bookend features", "the list"),),
    ),
    "install-exitrd": Page(
        "Check the exitrd against its .sha256 digest, keep it as a tree named by its "
        "digest under ROOT/usr/lib/bookend/exitrd (with --initrd: named by that installed "
        "initrd, and kept while it exists; exitrds no installed initrd names are removed), "
        "and install and enable bookend-exitrd.service. The service's loader, a shell "
        "script using coreutils and systemd-tmpfiles only, copies the exitrd the booted "
        "initrd named (its digest is in /run/bookend/exitrd.sha256) to /run/initramfs, so that "
        "systemd-shutdown pivots into it: by default it checks every entry against that "
        "digest at boot and copies at shutdown (checking in full again only what changed "
        "since); with --at boot it checks and copies at boot. Each --storage-daemon "
        "gets a drop-in so the running system leaves that daemon to the exitrd instead "
        "of stopping it while the root still needs it.",
        (
            (
                "bookend install-exitrd --image /boot/exitrd.img-$(uname -r) "
                "--initrd /boot/initrd.img-$(uname -r)",
                "keep that exitrd for that initrd, copied at every shutdown",
            ),
            (
                "bookend install-exitrd --image exitrd.img --root /srv/image",
                "install it into an image tree: nothing of bookend is needed at runtime",
            ),
            (
                "bookend install-exitrd --image /boot/exitrd.img --at boot",
                "copy it at boot: shutdown needs no reading from disk",
            ),
        ),
        (
            "/etc/systemd/system/bookend-exitrd.service: the unit",
            "/usr/lib/bookend/load-exitrd: the loader",
            "/usr/lib/bookend/exitrd/DIGEST/{tree,sums}, index, default: the exitrds kept",
            "/run/bookend/exitrd.sha256: the digest the booted initrd left",
        ),
    ),
    "ls": Page(
        "List an image's entries, one per line: mode, size, path and link target, with "
        "the segment each is in (early microcode segments first). Reads bookend's, "
        "dracut's, initramfs-tools' and mkinitcpio's images in any compression the kernel "
        "reads.",
        (
            ("bookend ls /boot/initrd.img-$(uname -r)", "every entry"),
            ("bookend ls --sort size IMAGE | head", "the biggest files"),
            ("bookend ls --json IMAGE | jq '.entries[].path'", "for scripts"),
        ),
    ),
    "extract": Page(
        "Unpack an image, or the named paths in it, into DIR. Nothing is ever written "
        "outside DIR: absolute names and '..' are refused, symlinks in the image resolve "
        "inside DIR, device nodes are made only by root. A truncated or corrupt archive "
        "is an error naming the offset.",
        (
            ("bookend extract IMAGE /tmp/img", "the whole image"),
            ("bookend extract IMAGE /tmp/img /etc/crypttab", "one file"),
        ),
        exit_status="0 when everything asked for was extracted, 1 when an entry was "
        "refused or a path is missing, 2 for bad input.",
    ),
    "diff": Page(
        "Compare two images: files added, removed and changed (content, mode, link "
        "target), with the size change of each and in total, and the kernel modules and "
        "units that changed, summarised.",
        (("bookend diff /boot/initrd.img.old /boot/initrd.img", "what an upgrade changed"),),
    ),
    "why": Page(
        "Print the chain of reasons that pulled PATH into a bookend image, read from the "
        "manifest inside the image (/usr/lib/bookend/manifest.json), so it works on the "
        "image alone. --sysroot DIR adds the package that owns PATH, from DIR's dpkg, rpm or "
        "pacman database.",
        (
            ("bookend why IMAGE /usr/sbin/cryptsetup", "who asked for it"),
            ("bookend why IMAGE /usr/bin/kmod --sysroot /", "and which package ships it"),
        ),
        exit_status="0 on success, 1 when PATH is not in the image or the image has no "
        "manifest, 2 for bad input.",
    ),
    "check": Page(
        "Check statically that an image can boot, before anyone reboots into it: /init "
        "exists and is executable, /etc/initrd-release is there, every ELF's interpreter "
        "and libraries resolve inside the image, every unit's Exec*= program is present, "
        "every kernel module's dependencies are present and the root filesystem's module "
        "(or a built-in) is there. Prints OK or one problem per line.",
        (
            ("bookend check /boot/initrd.img-$(uname -r)", "before rebooting"),
            ("bookend check --root-fstype xfs IMAGE", "for a root of another type"),
        ),
        exit_status="0 when the image passes, 1 when it has problems, 2 for bad input.",
    ),
    "size": Page(
        "Show what takes the space in an image: by directory, by the feature that asked "
        "for each file (from the image's manifest) and by package (from the sysroot's "
        "dpkg, rpm or pacman database). --html writes one self-contained page with a treemap.",
        (
            ("bookend size IMAGE", "the biggest directories, features and packages"),
            ("bookend size IMAGE --html size.html", "a treemap to open in a browser"),
        ),
    ),
    "config": Page(
        "Print the effective configuration as TOML: every setting with its value after the "
        "conf.d directories, --config and the flags are merged (a scalar takes the last "
        "value, a list appends, an empty list drops what came before) and the defaults "
        "worked out; --origin names the file, 'default' or 'command line' each value (each "
        "item of a list) came from; --json prints the same for scripts. The conf.d "
        "directories are this host's, never --sysroot's; --config-root DIR reads them "
        "under DIR.",
        (
            ("bookend config show --origin", "every value and where it was set"),
            ("bookend config show --json --kver 6.12.9", "what a build would use"),
        ),
        (
            "/usr/lib/bookend/conf.d, /etc/bookend/conf.d, /run/bookend/conf.d: *.toml in "
            "lexical order; a file masks one of the same name in an earlier directory",
        ),
    ),
    "install-kernel-hooks": Page(
        "Install the hooks that build bookend's images whenever a kernel is installed: the "
        "kernel-install(8) plugin 50-bookend.install, which builds into "
        "$KERNEL_INSTALL_STAGING_AREA unless KERNEL_INSTALL_INITRD_GENERATOR names another "
        "generator, and Debian's /etc/kernel/postinst.d and postrm.d hooks, which build and "
        "remove /boot/initrd.img-VERSION. Both by default, or the one named. The hooks "
        "run bookend with the Python that ran this command. One exitrd, written by every "
        "hook, serves all kernels.",
        (
            ("bookend install-kernel-hooks", "both kinds of hook, for this system"),
            ("bookend install-kernel-hooks --debian", "only Debian's, on a GRUB system"),
            ("bookend install-kernel-hooks --remove", "take them away again"),
        ),
        (
            "/etc/kernel/install.d/50-bookend.install (and a mask for Debian's 85-initrd.install)",
            "/etc/kernel/postinst.d/zz-bookend, /etc/kernel/postrm.d/zz-bookend",
            "/var/lib/bookend/exitrd.img: the exitrd the hooks write",
        ),
    ),
    "completion": Page(
        "Print a shell completion script for bookend's subcommands, flags and values.",
        (
            (
                "bookend completion bash > /etc/bash_completion.d/bookend",
                "complete bookend in every new bash",
            ),
            ('eval "$(bookend completion bash)"', "in this shell only"),
        ),
    ),
}
