"""The command line: a thin layer over the library; the only place exit codes exist."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bookend import __version__
from bookend.config import SETTINGS, Config, Layer, Setting, Vocabularies
from bookend.errors import BookendError, ConfigError
from bookend.scancache import ScanCache

if TYPE_CHECKING:
    from bookend.closure import Closure
    from bookend.features.base import Feature
    from bookend.inspect.extract import ExtractReport

log = logging.getLogger("bookend")


def _add_settings(parser: argparse.ArgumentParser) -> None:
    """The flags of every setting in the table of bookend.config."""
    parser.add_argument(
        "--config", type=Path, metavar="FILE",
        help="TOML configuration file, read after the drop-in directories",
    )  # fmt: skip
    parser.add_argument(
        "--config-root", type=Path, default=Path("/"), metavar="DIR",
        help="read the drop-in directories {usr/lib,etc,run}/bookend/conf.d under DIR "
        "(default: /, this host's; never --sysroot's)",
    )  # fmt: skip
    _add_feature_dirs(parser)
    for setting in SETTINGS:
        if setting.kind is bool:
            _add_switches(parser, setting, {
                setting.cli_flag: (True, setting.help),
                "--no-" + setting.cli_flag.removeprefix("--"): (False, setting.off_help),
            })  # fmt: skip
        elif setting.choice_flags:
            flags = {f"--{value}": (value, text) for value, text in setting.choice_flags.items()}
            _add_switches(parser, setting, flags)
        else:
            _add_value_flag(parser, setting)


def _add_switches(
    parser: argparse.ArgumentParser, setting: Setting, flags: dict[str, tuple[Any, str]]
) -> None:
    """Flags that each set a value (--generic, --no-microcode); the default's says so."""
    group = parser.add_mutually_exclusive_group()
    for flag, (value, help_text) in flags.items():
        default = " (default)" if value == setting.default else ""
        group.add_argument(
            flag, dest=setting.key, action="store_const", const=value, help=help_text + default
        )


def _add_feature_dirs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--feature-dir", type=Path, action="append", default=[], metavar="DIR",
        dest="feature_dirs",
        help="also read feature files (NAME.toml) from DIR, after "
        "{usr/lib,etc,run}/bookend/features.d under --config-root",
    )  # fmt: skip


def _add_value_flag(parser: argparse.ArgumentParser, setting: Setting) -> None:
    names = [setting.cli_flag, *([setting.short] if setting.short else [])]
    kwargs: dict[str, Any] = {
        "dest": setting.key,
        "metavar": setting.metavar,
        "help": setting.help,
        "default": None,
    }
    if setting.kind is list:
        kwargs["action"] = "append"
    elif setting.kind is int:
        kwargs["type"] = int
    if setting.choices:
        kwargs["choices"] = setting.choices
        kwargs.pop("metavar")
    parser.add_argument(*names, **kwargs)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bookend",
        description="Build the systemd initrd that brings a Linux system up.",
    )
    parser.add_argument("--version", action="version", version=f"bookend {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="say more (-vv: debug)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    build = commands.add_parser("build", help="build the initrd and, beside it, the exitrd")
    _add_settings(build)

    plan = commands.add_parser("plan", help="print what the image would hold, without building")
    _add_settings(plan)
    plan.add_argument("--closure", action="store_true", help="print every file, not just requests")
    plan.add_argument("--why", metavar="PATH", help="print the chain that pulls PATH in")
    plan.add_argument("--detect", action="store_true",
                      help="print only what hostonly detection finds on this machine "
                      "(the image's hostonly record), without the features")  # fmt: skip

    _add_boot_test(commands)

    features = commands.add_parser("features", help="list the features and where each is declared")
    features.add_argument(
        "--config-root", type=Path, default=Path("/"), metavar="DIR",
        help="read the feature directories {usr/lib,etc,run}/bookend/features.d under DIR",
    )  # fmt: skip
    _add_feature_dirs(features)

    config = commands.add_parser("config", help="the configuration bookend would build with")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = config_commands.add_parser(
        "show", help="print every effective setting as TOML, after drop-ins, --config and flags"
    )
    _add_settings(show)
    show.add_argument("--origin", action="store_true",
                      help="say where each value came from: a file, 'default' or "
                      "'command line' (for lists, each item)")  # fmt: skip
    show.add_argument("--json", action="store_true", help="print JSON, for scripts")

    install = commands.add_parser(
        "install-exitrd",
        help="keep the exitrd as a tree named by its digest, and install the unit that "
        "copies it into RAM for shutdown (coreutils and systemd-tmpfiles, no Python)",
    )
    install.add_argument("--image", type=Path, required=True, metavar="FILE",
                         help="the exitrd (its .sha256 digest must be beside it)")  # fmt: skip
    install.add_argument("--initrd", metavar="PATH",
                         help="the installed initrd built with it, as the root sees it "
                         "(e.g. /boot/initrd.img-VERSION): its exitrd is kept while it "
                         "exists")  # fmt: skip
    install.add_argument("--root", type=Path, default=Path("/"), metavar="DIR",
                         help="the root (or image tree) to install into (default: /)")  # fmt: skip
    install.add_argument("--at", choices=("shutdown", "boot"), default="shutdown",
                         help="when to copy it to /run/initramfs (default: shutdown)")  # fmt: skip
    install.add_argument("--unit-dir", type=Path, metavar="DIR",
                         help="where to install the unit "
                         "(default: ROOT/etc/systemd/system)")  # fmt: skip
    install.add_argument("--storage-daemon", action="append", default=[], metavar="UNIT",
                         help="a root storage daemon to leave to the exitrd")  # fmt: skip

    _add_kernel_hooks_command(commands)

    _add_inspect_commands(commands)

    completion = commands.add_parser("completion", help="print a shell completion script")
    completion.add_argument("shell", choices=("bash",), help="the shell to complete in")
    _add_manual(commands)
    return parser


class _ManualFormatter(argparse.HelpFormatter):
    """Wraps prose paragraphs to the terminal; keeps indented blocks (examples) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        import textwrap

        blocks = []
        for block in text.split("\n\n"):
            if block.startswith(" ") or "\n " in block:
                blocks.append(block)
            else:
                blocks.append(textwrap.fill(" ".join(block.split()), width, initial_indent=indent,
                                            subsequent_indent=indent))  # fmt: skip
        return "\n\n".join(blocks)


def _add_manual(commands: Any) -> None:
    """Give every subcommand its manual page from bookend.manual."""
    from bookend.manual import PAGES

    for name, sub in commands.choices.items():
        page = PAGES[name]
        sub.description = page.description
        sub.epilog = page.epilog()
        sub.formatter_class = _ManualFormatter


def _add_kernel_hooks_command(commands: Any) -> None:
    from bookend.install import DEFAULT_EXITRD

    hooks = commands.add_parser(
        "install-kernel-hooks",
        help="build bookend's images whenever a kernel is installed (kernel-install, Debian)",
    )
    hooks.add_argument("--root", type=Path, default=Path("/"), metavar="DIR",
                       help="the system to install into (default: /)")  # fmt: skip
    which = hooks.add_mutually_exclusive_group()
    which.add_argument("--kernel-install", dest="hook_sets", action="store_const",
                       const=["kernel-install"],
                       help="only the kernel-install(8) plugin 50-bookend.install")  # fmt: skip
    which.add_argument("--debian", dest="hook_sets", action="store_const", const=["debian"],
                       help="only the Debian hooks in /etc/kernel/post{inst,rm}.d")  # fmt: skip
    hooks.add_argument("--exitrd-output", type=Path, default=DEFAULT_EXITRD, metavar="FILE",
                       help=f"where the hooks write the exitrd (default: {DEFAULT_EXITRD}); "
                       "one exitrd serves every kernel")  # fmt: skip
    hooks.add_argument("--config", type=Path, metavar="FILE",
                       help="configuration file the hooks build with")  # fmt: skip
    hooks.add_argument("--remove", action="store_true", help="remove the hooks instead")


IMAGE_HELP = (
    "an initrd or exitrd: bookend's, dracut's, initramfs-tools' or mkinitcpio's; any number "
    "of segments, uncompressed or gzip, xz, zstd, lz4, bzip2 or lzma"
)


def _add_inspect_commands(commands: Any) -> None:
    """ls, extract, diff, why, check and size: they read any image, not only bookend's."""
    from bookend.inspect import SORTS

    json_help = "print JSON, for scripts"
    ls = commands.add_parser(
        "ls", help="list an image's entries: mode, size, link target and segment"
    )
    ls.add_argument("image", type=Path, metavar="IMAGE", help=IMAGE_HELP)
    ls.add_argument("--sort", choices=SORTS,
                    help="by name, or by size (biggest first); default: archive order")  # fmt: skip
    ls.add_argument("--json", action="store_true", help=json_help)

    extract = commands.add_parser(
        "extract", help="unpack an image into a directory, never writing outside it"
    )
    extract.add_argument("image", type=Path, metavar="IMAGE", help=IMAGE_HELP)
    extract.add_argument("directory", type=Path, metavar="DIR",
                         help="where to unpack (made if missing); symlinks in the image "
                         "resolve inside it")  # fmt: skip
    extract.add_argument("paths", nargs="*", metavar="PATH",
                         help="only these entries and what is below them")  # fmt: skip
    extract.add_argument("--json", action="store_true", help=json_help)

    diff = commands.add_parser(
        "diff", help="files, kernel modules and units added, removed or changed from A to B"
    )
    diff.add_argument("old", type=Path, metavar="A", help="the image before")
    diff.add_argument("new", type=Path, metavar="B", help="the image after")
    diff.add_argument("--json", action="store_true", help=json_help)

    why = commands.add_parser(
        "why", help="print the chain that pulled PATH into a bookend image, from its manifest"
    )
    why.add_argument("image", type=Path, metavar="IMAGE", help=IMAGE_HELP)
    why.add_argument("path", metavar="PATH", help="an absolute path in the image")
    why.add_argument("--sysroot", type=Path, metavar="DIR",
                     help="also name the package that owns PATH, from DIR's dpkg, rpm or "
                     "pacman database")  # fmt: skip

    check = commands.add_parser(
        "check", help="check statically that an image can boot: init, libraries, units, modules"
    )
    check.add_argument("image", type=Path, metavar="IMAGE", help=IMAGE_HELP)
    check.add_argument("--root-fstype", metavar="TYPE",
                       help="root filesystem type whose module must be in the image "
                       "(default: from the image's /etc/fstab /sysroot line)")  # fmt: skip
    check.add_argument("--json", action="store_true", help=json_help)

    size = commands.add_parser(
        "size", help="what takes the space in an image: by directory, feature and package"
    )
    size.add_argument("image", type=Path, metavar="IMAGE", help=IMAGE_HELP)
    size.add_argument("--sysroot", type=Path, default=Path("/"), metavar="DIR",
                      help="whose dpkg, rpm or pacman database says which package owns "
                      "each file (default: /)")  # fmt: skip
    size.add_argument("--html", type=Path, metavar="OUT.html",
                      help="write a self-contained HTML treemap (no network needed to view "
                      "it) instead of the text summary")  # fmt: skip
    size.add_argument("--json", action="store_true", help=json_help)


def _add_boot_test(commands: Any) -> None:
    test = commands.add_parser(
        "boot-test",
        help="boot a kernel and an image in QEMU against root disks (never changed), prove "
        "the root came up and the shutdown went through the exitrd, and say where time went",
    )
    test.add_argument("image", nargs="?", type=Path, metavar="IMAGE",
                      help="the initrd to test (default: one built now with the build "
                      "options given, carrying its exitrd, plus the virtio drivers)")  # fmt: skip
    test.add_argument("--kernel", type=Path, metavar="FILE",
                      help="the kernel (default: the sysroot's /boot/vmlinuz-KVER of the "
                      "build, or the newest in /boot)")  # fmt: skip
    test.add_argument("--disk", type=Path, action="append", default=[], metavar="FILE",
                      help="a root disk image or block device, attached as a snapshot "
                      "(repeat for more, in order; none: the sysroot is the root, shared "
                      "read-only, writable in RAM)")  # fmt: skip
    test.add_argument("--append", action="append", default=[], metavar="WORDS",
                      help="kernel command-line words (root=, rd.luks.uuid=...)")  # fmt: skip
    test.add_argument(
        "--accel",
        choices=("auto", "kvm", "tcg"),
        default="auto",
        help="auto (default): KVM when a short probe runs a guest under it, else TCG",
    )
    test.add_argument("--timeout", type=float, default=900, metavar="SECONDS",
                      help="for the whole boot and shutdown (default 900)")  # fmt: skip
    test.add_argument("--memory", type=int, default=1024, metavar="MIB",
                      help="guest RAM (default 1024, at least 256)")  # fmt: skip
    test.add_argument("--cpus", type=int, default=2, metavar="N",
                      help="virtual CPUs (default 2; under TCG each is a host thread)")  # fmt: skip
    test.add_argument("--passphrase-file", type=Path, metavar="FILE",
                      help="typed at each LUKS passphrase prompt on the console")  # fmt: skip
    test.add_argument("--console-log", type=Path, metavar="FILE", help="keep the console here")
    test.add_argument("--json", action="store_true", help="print the report as JSON")
    test.add_argument("--timeline", type=Path, metavar="FILE",
                      help="draw the phases and the initrd's units (.svg or .html)")  # fmt: skip
    _add_settings(test)


def _cli_values(args: argparse.Namespace) -> dict[str, Any]:
    return {s.key: getattr(args, s.key) for s in SETTINGS if getattr(args, s.key) is not None}


def vocabularies(registry: Mapping[str, Feature] | None = None) -> Vocabularies:
    """The names the configuration's features and driver classes must be among.

    Passed in from here, so that configuration never imports a feature.
    """
    from bookend.drivers import DRIVER_CLASSES
    from bookend.features import ALL

    features = ALL if registry is None else registry
    names = sorted(features)
    return {"features": names, "exitrd_features": names, "driver_classes": sorted(DRIVER_CLASSES)}


def _registry(args: argparse.Namespace) -> Mapping[str, Feature]:
    """bookend's features and the feature files', read before the configuration, whose
    `features` may name them."""
    from bookend.features import ALL
    from bookend.features.datafiles import load_features

    return load_features(args.config_root, args.feature_dirs, ALL)


def _config(
    args: argparse.Namespace,
    cache: ScanCache | None = None,
    registry: Mapping[str, Feature] | None = None,
    added: Sequence[Layer] = (),
) -> Config:
    """The configuration of the command line; added: the command's own layers after it."""
    from bookend.resolve import configure

    return configure(
        args.config,
        _cli_values(args),
        vocabularies(registry or _registry(args)),
        config_root=args.config_root,
        cache=cache,
        added=added,
    )


def cmd_build(args: argparse.Namespace) -> int:
    from bookend.build import build_initrd, scan_cache

    cache = scan_cache()  # the one the build uses: the module database is read once
    registry = _registry(args)
    config = _config(args, cache, registry)
    result = build_initrd(config, cache, registry)
    state = "up to date, not rewritten: " if result.up_to_date else ""
    for image in (result.initrd, result.exitrd):
        if image is not None:
            initrd = image is result.initrd
            uki = " in a UKI" if config.uki and initrd else ""
            compression = config.compress if initrd else config.exitrd_compress
            print(
                f"{image.path}: {state}{len(image.closure.entries)} entries{uki}, "
                f"{image.size / 1e6:.1f} MB ({compression.value}), kernel {config.kver}"
            )
    _print_ssh_fingerprints(result.initrd.closure)
    return 0


def _print_ssh_fingerprints(closure: Closure) -> None:
    """The initrd's SSH host keys, so the first connection to it can be checked."""
    from bookend.features.ssh import fingerprints

    for fingerprint in fingerprints(closure.archive_entries()):
        print(f"ssh host key of the initrd: {fingerprint}")


def cmd_boot_test(args: argparse.Namespace) -> int:
    import tempfile

    from bookend.boottest.run import (
        BootTest,
        check_disks_and_qemu,
        check_machine,
        default_cache,
        end_progress,
        progress_printer,
        run_boot_test,
        test_image_carries_exitrd,
    )
    from bookend.boottest.timeline import write_timeline

    if args.timeline is not None and args.timeline.suffix not in (".svg", ".html"):
        raise ConfigError(f"--timeline {args.timeline}: name a .svg or .html file")
    passphrase = None
    if args.passphrase_file is not None:
        try:
            passphrase = args.passphrase_file.read_text().rstrip("\n")
        except OSError as error:
            raise ConfigError(
                f"--passphrase-file {args.passphrase_file}: {error.strerror}"
            ) from None
    # No --disk: the sysroot itself is the root (shared read-only, writable in RAM).
    share = None if args.disk else Path(args.sysroot or "/")
    with tempfile.TemporaryDirectory(prefix="bookend-boot-test-") as scratch:
        image, kernel = args.image, args.kernel
        if image is None:
            # Bad input is refused before a build.
            check_machine(args.memory, args.cpus, args.timeout)
            check_disks_and_qemu(args.disk, share=share)
            image, kernel, sysroot = _build_for_boot_test(args, Path(scratch), share is not None)
            share = None if share is None else sysroot  # a config file's sysroot too
        kernel = kernel or _newest_kernel()
        test = BootTest(
            kernel=kernel, image=image, disks=tuple(args.disk), append=" ".join(args.append),
            accel=args.accel, timeout=args.timeout, memory_mib=args.memory, cpus=args.cpus,
            passphrase=passphrase, console_log=args.console_log,
            expect_exitrd=test_image_carries_exitrd(image), cache_dir=default_cache(),
            share=share,
        )  # fmt: skip
        report = run_boot_test(test, None if args.json else progress_printer())
    if not args.json:
        end_progress()
    if args.timeline is not None:
        write_timeline(report, args.timeline)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        from bookend.boottest.report import summary

        print(summary(report))
        if args.timeline is not None:
            print(f"  timeline: {args.timeline}")
    return 0 if report.passed else 1


def _build_for_boot_test(
    args: argparse.Namespace, scratch: Path, share: bool
) -> tuple[Path, Path | None, Path]:
    """The image boot-test builds when given none: the build options as given, then
    boot-test's own (bookend.boottest.run.image_settings: into scratch, the exitrd
    carried, the virtio drivers; share: the shared sysroot's feature); with its kernel
    (when the sysroot has it) and the sysroot it was built from."""
    from bookend.boottest.run import image_settings
    from bookend.build import build_initrd, scan_cache

    added = image_settings(_cli_values(args), scratch, share)
    cache = scan_cache()
    registry = _registry(args)
    config = _config(args, cache, registry, [added])
    result = build_initrd(config, cache, registry)
    kernel = config.sysroot / f"boot/vmlinuz-{config.kver}"
    return result.initrd.path, kernel if kernel.is_file() else None, config.sysroot


def _newest_kernel() -> Path:
    from bookend.boottest.qemu import installed_kernels

    kernels = installed_kernels()
    if not kernels:
        raise ConfigError("no kernel: /boot has no vmlinuz-*; name one with --kernel")
    return kernels[-1].path


def cmd_plan(args: argparse.Namespace) -> int:
    from bookend.build import image_closures, unpack_directory
    from bookend.closure import format_closure
    from bookend.plan import format_plan, make_plan

    cache = ScanCache(None)  # shared by the stages, kept in memory only
    registry = _registry(args)
    config = _config(args, cache, registry)
    if args.detect:
        from bookend.hostonly import format_detection
        from bookend.plan import host_detection

        sys.stdout.write(format_detection(host_detection(config, cache)))
        return 0
    plan = make_plan(config, cache, registry)
    if not args.closure and not args.why:
        print(format_plan(plan))
        return 0
    # The initrd's closure as the build writes it: with the exitrd's digest (and tree).
    with unpack_directory(cache) as unpack_dir:
        closure = image_closures(config, plan, cache, unpack_dir)[0]
    if args.why:
        if args.why not in closure.entries:
            print(f"bookend: {args.why} is not in the image", file=sys.stderr)
            return 1
        print(closure.format_why(args.why))
        return 0
    print(format_closure(closure))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from bookend.config.show import show_json, show_text

    config = _config(args)  # only "show" so far; argparse refuses any other action
    if args.json:
        _print_json(show_json(config, args.origin))
    else:
        sys.stdout.write(show_text(config, args.origin))
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    from bookend.features import DEFAULT

    for name, feature in sorted(_registry(args).items()):
        marker = "*" if name in DEFAULT or feature.switch_on.always else " "
        origin = f" [{feature.origin}]" if feature.origin else ""
        print(f"{marker} {name:12} {feature.help}{origin}")
    return 0


def cmd_install_exitrd(args: argparse.Namespace) -> int:
    from bookend.exitrd_store import install_exitrd
    from bookend.features.storage_daemons import systemd_version
    from bookend.install import LoadAt, install_exitrd_unit, install_storage_daemon_dropins
    from bookend.sysroot import Sysroot

    installed = install_exitrd(args.image, args.root, args.initrd)
    done = "installed" if installed.unpacked else "already installed"
    print(f"{installed.store / installed.digest}: {done}"
          + (f", named by {args.initrd}" if args.initrd else ""))  # fmt: skip
    for digest in installed.removed:
        print(f"{installed.store / digest}: removed, no installed initrd names it")
    unit_dir = args.unit_dir or args.root / "etc/systemd/system"
    unit = install_exitrd_unit(LoadAt(args.at), unit_dir)
    print(f"{unit}: installed and enabled; the exitrd is copied to /run/initramfs "
          f"at {args.at}")  # fmt: skip
    systemd = systemd_version(Sysroot(args.root)) if args.storage_daemon else None
    for dropin in install_storage_daemon_dropins(args.storage_daemon, unit_dir, systemd):
        print(f"{dropin}: the running system leaves this root storage daemon to the exitrd")
    return 0


def cmd_install_kernel_hooks(args: argparse.Namespace) -> int:
    from bookend.install import (
        HookSet,
        initramfs_tools_note,
        install_kernel_hooks,
        remove_kernel_hooks,
    )

    hook_sets = [HookSet(name) for name in args.hook_sets or ("kernel-install", "debian")]
    if args.remove:
        for path in remove_kernel_hooks(args.root, hook_sets):
            print(f"{path}: removed")
        return 0
    for path in install_kernel_hooks(args.root, hook_sets, args.exitrd_output, args.config):
        done = "masked (it would stage a second initrd)" if path.is_symlink() else "installed"
        print(f"{path}: {done}")
    exitrd = args.exitrd_output
    print(f"the hooks write the exitrd to {exitrd}; once one exists, "
          f"`bookend install-exitrd --image {exitrd}` loads it at shutdown")  # fmt: skip
    note = initramfs_tools_note(args.root) if HookSet.DEBIAN in hook_sets else None
    if note:
        print(f"bookend: note: {note}", file=sys.stderr)
    return 0


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2))


def cmd_ls(args: argparse.Namespace) -> int:
    from bookend.inspect.image import scan_image
    from bookend.inspect.listing import format_listing, listing_json

    scan = scan_image(args.image)
    if args.json:
        _print_json(listing_json(scan, args.sort))
    else:
        sys.stdout.write(format_listing(scan, args.sort))
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    from bookend.inspect.extract import extract_image

    report = extract_image(args.image, args.directory, args.paths)
    if args.json:
        _print_json({
            "image": str(args.image),
            "directory": str(args.directory),
            "extracted": report.extracted,
            "refused": [{"path": name, "reason": why} for name, why in report.refused],
            "skipped": [{"path": path, "reason": why} for path, why in report.skipped],
            "missing": report.missing,
        })  # fmt: skip
    else:
        print(f"{args.image}: {report.extracted} entries extracted to {args.directory}")
    _print_extract_notes(args.image, report)
    return 0 if report.ok else 1


def _print_extract_notes(image: Path, report: ExtractReport) -> None:
    """One line per kind of skipped entry, per refused entry and per path not found."""
    from bookend.inspect.image import printable

    reasons: dict[str, list[str]] = {}
    for path, why in report.skipped:
        reasons.setdefault(why, []).append(printable(path))
    for why, paths in reasons.items():
        print(f"bookend: note: {len(paths)} skipped ({why}): {', '.join(paths)}", file=sys.stderr)
    for name, why in report.refused:
        print(f"bookend: {image}: entry '{printable(name)}' refused: {why}", file=sys.stderr)
    for path in report.missing:
        print(f"bookend: {image}: {printable(path)}: not in the image", file=sys.stderr)


def cmd_diff(args: argparse.Namespace) -> int:
    from bookend.inspect.diff import diff_images, diff_json, format_diff

    diff = diff_images(args.old, args.new)
    if args.json:
        _print_json(diff_json(diff))
    else:
        sys.stdout.write(format_diff(diff))
    return 0


def cmd_why(args: argparse.Namespace) -> int:
    import tempfile

    from bookend.errors import ArchiveError
    from bookend.inspect.extract import extract_image
    from bookend.manifest import MANIFEST_PATH, closure_from_manifest

    with tempfile.TemporaryDirectory(prefix="bookend-why-") as scratch:
        extract_image(args.image, Path(scratch), [MANIFEST_PATH])
        manifest = Path(scratch) / MANIFEST_PATH.lstrip("/")
        if not manifest.is_file():
            raise ArchiveError(f"{args.image}: no {MANIFEST_PATH}; not built by bookend 0.1+")
        closure = closure_from_manifest(manifest.read_bytes(), str(args.image))
    path = "/" + args.path.strip("/")
    if path not in closure.entries:
        print(f"bookend: {path} is not in {args.image}", file=sys.stderr)
        return 1
    print(closure.format_why(path))
    if args.sysroot is not None:
        print(package_line(path, args.sysroot))
    return 0


def package_line(path: str, sysroot: Path) -> str:
    """`why --sysroot`'s last line: who owns path, and which database says so."""
    from bookend.packages import load_package_index

    index = load_package_index(sysroot)
    if not index.databases:
        return f"package: none known (no dpkg, rpm or pacman database in {sysroot})"
    read = ", ".join(f"{db.kind} {db.path}" for db in index.databases)
    package = index.owner(path)
    if package is None:
        return f"package: none ({read} lists no {index.canonical(path)})"
    name = f"{package.name} {package.version}" if package.version else package.name
    return f"package: {name} ({read})"


def cmd_check(args: argparse.Namespace) -> int:
    from bookend.inspect.check import check_image
    from bookend.inspect.image import printable

    result = check_image(args.image, args.root_fstype)
    if args.json:
        _print_json({"image": str(args.image), "kind": result.kind, "ok": result.ok,
                     "problems": result.problems, "checked": result.counts})  # fmt: skip
    elif result.ok:
        print("OK")
    else:
        for problem in result.problems:
            print(printable(problem))
    return 0 if result.ok else 1


def cmd_size(args: argparse.Namespace) -> int:
    from bookend.inspect.size import format_summary, human_size, report_json, size_report
    from bookend.inspect.size_html import write_html

    report = size_report(args.image, args.sysroot)
    if args.html:
        write_html(report, args.html)
    if args.json:
        _print_json(report_json(report))
    elif args.html:
        print(f"{args.html}: treemap of {args.image}, {human_size(report.total)} of content")
    else:
        sys.stdout.write(format_summary(report))
    return 0


def cmd_completion(args: argparse.Namespace) -> int:
    from bookend.completion import bash_script

    names = vocabularies()
    values: dict[str, str | list[str]] = {}
    for setting in SETTINGS:
        if setting.vocabulary:
            values[setting.key] = list(names[setting.key])
        elif isinstance(setting.complete, tuple):
            values[setting.key] = list(setting.complete)
        elif setting.complete:
            values[setting.key] = setting.complete
    sys.stdout.write(bash_script(make_parser(), values))
    return 0


COMMANDS = {
    "build": cmd_build,
    "boot-test": cmd_boot_test,
    "plan": cmd_plan,
    "features": cmd_features,
    "config": cmd_config,
    "install-exitrd": cmd_install_exitrd,
    "install-kernel-hooks": cmd_install_kernel_hooks,
    "ls": cmd_ls,
    "extract": cmd_extract,
    "diff": cmd_diff,
    "check": cmd_check,
    "why": cmd_why,
    "size": cmd_size,
    "completion": cmd_completion,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="bookend: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except BookendError as exc:
        print(f"bookend: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        print("bookend: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader (e.g. head) has had enough; stop quietly, as other tools do.
        sys.stderr.close()
        return 141
