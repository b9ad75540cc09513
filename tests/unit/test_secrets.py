"""Host secrets stay out of images unless the configuration names them exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bookend.build import write_image
from bookend.closure import Closure, build_closure
from bookend.features.base import Request, RequestKind
from bookend.inspect.image import MANIFEST, scan_image
from bookend.inspect.listing import format_listing
from bookend.manifest import MANIFEST_PATH, closure_from_manifest, with_manifest
from bookend.plan import Plan
from bookend.secrets import crypttab_keyfiles
from tests.unit.conftest import load_config

ROOT = Path(__file__).resolve().parents[2]
PRIVATE = "/etc/ssh/ssh_host_ed25519_key"
HOST_SECRETS = ("/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-",
                "/etc/machine-id", PRIVATE, "/etc/ssh/ssh_host_rsa_key",
                "/var/lib/systemd/random-seed", "/var/lib/systemd/credential.secret",
                "/etc/keys/data.key")  # fmt: skip


@pytest.fixture
def secret_tree(root_tree: Path) -> Path:
    """A sysroot with every kind of host secret, and harmless files beside them."""
    for path in (*HOST_SECRETS, "/etc/ssh/ssh_host_ed25519_key.pub", "/etc/ssh/sshd_config",
                 "/etc/hostname", "/var/lib/systemd/other", "/etc/keys/readme"):  # fmt: skip
        host = root_tree / path.lstrip("/")
        host.parent.mkdir(parents=True, exist_ok=True)
        host.write_text(f"content of {path}\n")
        host.chmod(0o600 if path in HOST_SECRETS else 0o644)
    (root_tree / "etc/crypttab").write_text(
        "# name device key options\ndata UUID=1234 /etc/keys/data.key luks\n"
    )
    (root_tree / "etc/hostkey").symlink_to("ssh/ssh_host_ed25519_key")
    return root_tree


def closure_of(root: Path, files: list[str], keyfiles: tuple[str, ...] = ()) -> Closure:
    config = load_config(None, {"sysroot": str(root), "files": files, "keyfiles": list(keyfiles)})
    requests = [Request(RequestKind.PATH, p, "files (test)") for p in [*files, *keyfiles]]
    return build_closure(config, Plan(features=(), requests=tuple(requests), generated=()))


def test_crypttab_keyfiles_are_the_third_field_when_a_path() -> None:
    text = ("a UUID=1 /etc/keys/a.key luks\nb UUID=2 none\nc UUID=3 - tpm2-device=auto\n"
            "d UUID=4 /key.bin:UUID=5 luks\ne UUID=6 /dev/urandom swap\n# f x /g\n")  # fmt: skip
    assert crypttab_keyfiles(text) == ["/etc/keys/a.key", "/key.bin"]


def test_directories_bring_no_secrets_and_say_so(secret_tree: Path) -> None:
    closure = closure_of(secret_tree, ["/etc", "/var/lib/systemd"])
    for secret in HOST_SECRETS:
        assert secret not in closure.entries, secret
    for kept in ("/etc/ssh/ssh_host_ed25519_key.pub", "/etc/ssh/sshd_config", "/etc/hostname",
                 "/var/lib/systemd/other", "/etc/keys/readme", "/etc/crypttab"):  # fmt: skip
        assert kept in closure.entries, kept
    assert "/etc/hostkey" not in closure.entries  # a link to a secret brings nothing
    assert f"{PRIVATE}: a host secret, left out (name it exactly in files to include it)" in (
        closure.warnings
    )
    assert closure.secrets() == []


def test_a_secret_named_exactly_goes_in_marked(secret_tree: Path) -> None:
    closure = closure_of(secret_tree, ["/etc/ssh", PRIVATE])
    assert closure.entries[PRIVATE].secret
    assert not closure.entries["/etc/ssh/ssh_host_ed25519_key.pub"].secret
    assert "/etc/ssh/ssh_host_rsa_key" not in closure.entries
    assert closure.secrets() == [PRIVATE]


def test_a_link_named_exactly_brings_its_secret(secret_tree: Path) -> None:
    closure = closure_of(secret_tree, ["/etc/hostkey"])
    assert closure.entries["/etc/hostkey"].entry.target == "ssh/ssh_host_ed25519_key"
    assert closure.secrets() == [PRIVATE]


def test_key_files_are_secret_wherever_they_are(secret_tree: Path) -> None:
    (secret_tree / "root.key").write_bytes(os.urandom(32))
    closure = closure_of(secret_tree, [], keyfiles=("/root.key", "/etc/keys/data.key"))
    assert closure.secrets() == ["/etc/keys/data.key", "/root.key"]


def test_an_image_with_secrets_is_root_only_and_listed_as_such(
    secret_tree: Path, tmp_path: Path
) -> None:
    output = tmp_path / "initrd.img"
    config = load_config(None, {"sysroot": str(secret_tree), "output": str(tmp_path / "x.img"),
                                "compress": "gzip"})  # fmt: skip
    with_secret = with_manifest(closure_of(secret_tree, ["/etc/ssh", PRIVATE]))
    write_image(config, with_secret, output)
    assert output.stat().st_mode & 0o777 == 0o600
    in_image = PRIVATE.lstrip("/")
    marked = {e.path for e in scan_image(output).entries if e.secret}
    assert marked == {in_image}
    line = next(x for x in format_listing(scan_image(output)).splitlines() if in_image in x)
    assert line.startswith("-rw-------") and line.endswith(f"{PRIVATE.lstrip('/')}  [secret]")
    ls = subprocess.run([sys.executable, "-m", "bookend", "ls", "--json", str(output)],
                        cwd=ROOT, capture_output=True, text=True, check=True)  # fmt: skip
    secret = {e["path"] for e in json.loads(ls.stdout)["entries"] if e["secret"]}
    assert secret == {in_image}
    manifest = closure_from_manifest(
        json.dumps({"format": 1, "entries": {PRIVATE: ["x", None]}, "secret": [PRIVATE]}).encode(),
        "image",
    )
    assert manifest.secrets() == [PRIVATE]

    without = tmp_path / "plain.img"
    write_image(config, with_manifest(closure_of(secret_tree, ["/etc/ssh"])), without)
    assert without.stat().st_mode & 0o777 == 0o644
    assert not any(e.secret for e in scan_image(without).entries)


def test_ls_finds_the_manifest_where_bookend_writes_it() -> None:
    assert MANIFEST_PATH.lstrip("/") == MANIFEST


def test_a_password_hash_for_the_emergency_shell_is_secret(root_tree: Path) -> None:
    from bookend.features.base import FeatureContext, Generated
    from bookend.features.emergency import FEATURE

    assert FEATURE.compute is not None
    compute = FEATURE.compute

    def shadow(access: str) -> Generated:
        config = load_config(None, {"sysroot": str(root_tree), "emergency_shell": access})
        return next(
            item
            for item in compute(FeatureContext(config))
            if isinstance(item, Generated) and item.entry.path == "/etc/shadow"
        )

    hashed = "$6$salt$" + "x" * 86
    assert shadow(hashed).secret
    assert not shadow("locked").secret and not shadow("unlocked").secret
    config = load_config(None, {"sysroot": str(root_tree)})
    plan = Plan(features=(), requests=(), generated=(shadow(hashed),))
    assert build_closure(config, plan).secrets() == ["/etc/shadow"]
