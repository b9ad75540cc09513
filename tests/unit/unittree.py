"""A fixture sysroot's units: a package's service with what it runs, needs and reads."""

from __future__ import annotations

from pathlib import Path

SYSTEM = "usr/lib/systemd/system"
DEMO = """\
[Unit]
Description=Demo
DefaultDependencies=no
Requires=demo-helper.service
Wants=not-in-sysroot.service
After=demo-helper.service
ConditionPathExists=/etc/demo.conf
ConditionPathExists=!/etc/demo-disabled
ConditionPathIsDirectory=|/var/lib/demo
ConditionPathExists=/run/demo-runtime

[Service]
Type=oneshot
EnvironmentFile=/etc/default/demo
EnvironmentFile=-/etc/default/demo-optional
ExecStart=/usr/bin/demo-token \\
    --token

[Install]
WantedBy=initrd.target
"""
HELPER = "[Unit]\nDefaultDependencies=no\n[Service]\nExecStart=-demo-helperd\n"


def write(root: Path, path: str, text: str, mode: int = 0o644) -> None:
    file = root / path
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(text)
    file.chmod(mode)


def make_demo_tree(root_tree: Path) -> Path:
    """root_tree with demo.service, what it needs, and things it must not bring."""
    write(root_tree, f"{SYSTEM}/demo.service", DEMO)
    write(root_tree, f"{SYSTEM}/demo-helper.service", HELPER)
    write(root_tree, f"{SYSTEM}/initrd.target", "[Unit]\nDescription=Initrd\n")
    write(root_tree, f"{SYSTEM}/multi-user.target", "[Unit]\nDescription=Multi-User\n")
    write(root_tree, "etc/systemd/system/demo.service.d/local.conf", "[Service]\nNice=5\n")
    write(root_tree, "usr/bin/sh", "", 0o755)
    write(root_tree, "usr/bin/demo-token", "#!/bin/sh\necho token\n", 0o755)
    write(root_tree, "usr/sbin/demo-helperd", "#!/bin/sh\n", 0o755)
    write(root_tree, "etc/default/demo", "TOKEN=1\n")
    write(root_tree, "etc/demo.conf", "x\n")
    write(root_tree, "etc/demo-disabled", "x\n")
    (root_tree / "var/lib/demo/big").mkdir(parents=True)
    write(root_tree, "var/lib/demo/big/state", "not wanted\n")
    return root_tree
