"""bookend.modinfo against objects built here by gcc and binutils, their compressed
copies made by the xz, zstd and gzip tools, and the host's own modules with modinfo(8)
as a referee."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import zstandard

from bookend.errors import ElfError
from bookend.modinfo import module_bytes, module_info, parse_modinfo, read_modinfo

# The strings as a module carries them: keys repeat, and aligned(8) on one leaves NUL
# padding before it, as the linker leaves between a module's strings.
MODINFO_C = r"""
#define MODINFO(id, text) \
    static const char id[] __attribute__((section(".modinfo"), used)) = text
MODINFO(a, "license=GPL");
MODINFO(b, "firmware=vendor/chip-a.bin");
MODINFO(c, "alias=pci:v00008086d*");
MODINFO(d, "depends=jbd2,mbcache");
static const char e[] __attribute__((section(".modinfo"), used, aligned(8))) =
    "firmware=vendor/sub/chip-b.fw";
MODINFO(f, "softdep=pre: crc32c");
MODINFO(g, "weakdep=zstd_decompress");
MODINFO(h, "alias=fs-test");
int placeholder(void) { return 0; }
"""
EXPECTED = {
    "license": ["GPL"],
    "firmware": ["vendor/chip-a.bin", "vendor/sub/chip-b.fw"],
    "alias": ["pci:v00008086d*", "fs-test"],
    "depends": ["jbd2", "mbcache"],
    "softdep": ["pre: crc32c"],
    "weakdep": ["zstd_decompress"],
}
BLOB = b"license=GPL\0\0\0\0firmware=a.bin\0depends=\0firmware=b/c.bin\0"
BLOB_EXPECTED = {"license": ["GPL"], "firmware": ["a.bin", "b/c.bin"], "depends": []}


def _need(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """test.ko (64-bit, gcc), test32.ko (gcc -m32), be32.ko and be64.ko (objcopy from a
    raw blob into big-endian ELF), nomodinfo.ko, and compressed copies of test.ko."""
    _need("gcc", "objcopy", "xz", "zstd", "gzip")
    root = tmp_path_factory.mktemp("modinfo")
    (root / "test.c").write_text(MODINFO_C)
    (root / "plain.c").write_text("int f(void) { return 1; }\n")
    subprocess.run(["gcc", "-c", "-o", root / "test.ko", root / "test.c"], check=True)
    subprocess.run(["gcc", "-m32", "-c", "-o", root / "test32.ko", root / "test.c"], check=True)
    subprocess.run(["gcc", "-c", "-o", root / "nomodinfo.ko", root / "plain.c"], check=True)
    (root / "blob").write_bytes(BLOB)
    for target, name in (("elf32-big", "be32.ko"), ("elf64-big", "be64.ko")):
        subprocess.run(
            ["objcopy", "-I", "binary", "-O", target, "--rename-section", ".data=.modinfo",
             "blob", name],
            cwd=root, check=True,
        )  # fmt: skip
    plain = (root / "test.ko").read_bytes()
    # As kmod's tools and the kernel's build compress modules; zstd reads a pipe, so
    # its frame header leaves out the content size.
    for suffix, command in (
        (".xz", ["xz", "--check=crc32", "-c"]),
        (".zst", ["zstd", "-q", "-c"]),
        (".gz", ["gzip", "-n", "-c"]),
    ):
        done = subprocess.run(command, input=plain, stdout=subprocess.PIPE, check=True)
        (root / f"test.ko{suffix}").write_bytes(done.stdout)
    return root


def test_64_bit_object_from_gcc(objects: Path) -> None:
    assert module_info(objects / "test.ko") == EXPECTED


def test_32_bit_object_from_gcc(objects: Path) -> None:
    assert "ELF 32-bit LSB" in _file_type(objects / "test32.ko")
    assert module_info(objects / "test32.ko") == EXPECTED


@pytest.mark.parametrize(("name", "kind"), [("be32.ko", "32-bit MSB"), ("be64.ko", "64-bit MSB")])
def test_big_endian_objects(objects: Path, name: str, kind: str) -> None:
    assert kind in _file_type(objects / name)
    assert module_info(objects / name) == BLOB_EXPECTED


def _file_type(path: Path) -> str:
    if shutil.which("file") is None:
        pytest.skip("needs file(1)")
    return subprocess.run(["file", path], capture_output=True, text=True, check=True).stdout


def test_no_modinfo_section_gives_nothing(objects: Path) -> None:
    assert module_info(objects / "nomodinfo.ko") == {}


@pytest.mark.parametrize("suffix", [".xz", ".zst", ".gz"])
def test_compressed_modules_decompress_to_the_plain_bytes(objects: Path, suffix: str) -> None:
    compressed = objects / f"test.ko{suffix}"
    assert compressed.read_bytes() != (objects / "test.ko").read_bytes()
    assert module_bytes(compressed) == (objects / "test.ko").read_bytes()
    assert module_info(compressed) == EXPECTED


def test_zstd_frame_without_content_size(objects: Path) -> None:
    # The case a one-shot decompress refuses; make sure the fixture really is that case.
    frame = (objects / "test.ko.zst").read_bytes()
    assert zstandard.get_frame_parameters(frame).content_size == zstandard.CONTENTSIZE_UNKNOWN
    assert module_bytes(objects / "test.ko.zst") == (objects / "test.ko").read_bytes()


def test_parse_skips_padding_and_splits_depends() -> None:
    assert parse_modinfo(BLOB) == BLOB_EXPECTED
    assert parse_modinfo(b"\0\0name=x\0not-an-assignment\0=novalue\0") == {"name": ["x"]}


def test_non_utf8_value_survives_as_surrogates() -> None:
    value = parse_modinfo(b"author=Jos\xe9\0")["author"][0]
    assert value.encode("utf-8", "surrogateescape") == b"Jos\xe9"


# --- errors name the file ---------------------------------------------------------------


def _garbage(objects: Path, tmp_path: Path, case: str) -> Path:
    plain = (objects / "test.ko").read_bytes()
    if case == "not-elf":
        return _write(tmp_path / "bad.ko", b"this is no ELF file at all, not even close")
    if case == "short-ident":
        return _write(tmp_path / "bad.ko", plain[:10])
    if case == "truncated":  # gcc puts the section headers last
        return _write(tmp_path / "bad.ko", plain[: len(plain) - 100])
    if case == "bad-class":
        return _write(tmp_path / "bad.ko", plain[:4] + b"\x07" + plain[5:])
    if case == "xz-garbage":
        return _write(tmp_path / "bad.ko.xz", b"\xfd7zXZ\0 and then nonsense")
    if case == "zst-truncated":
        frame = (objects / "test.ko.zst").read_bytes()
        return _write(tmp_path / "bad.ko.zst", frame[: len(frame) // 2])
    if case == "zst-empty":
        return _write(tmp_path / "bad.ko.zst", b"")
    if case == "gz-garbage":
        return _write(tmp_path / "bad.ko.gz", b"\x1f\x8b\x08\0 not deflate data at all")
    if case == "gz-truncated":
        stream = (objects / "test.ko.gz").read_bytes()
        return _write(tmp_path / "bad.ko.gz", stream[: len(stream) // 2])
    raise AssertionError(case)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "case",
    ["not-elf", "short-ident", "truncated", "bad-class", "xz-garbage", "zst-truncated",
     "zst-empty", "gz-garbage", "gz-truncated"],
)  # fmt: skip
def test_garbage_raises_elf_error_naming_the_file(objects: Path, tmp_path: Path, case: str) -> None:
    path = _garbage(objects, tmp_path, case)
    with pytest.raises(ElfError, match=re.escape(str(path))):
        module_info(path)


def test_missing_file_raises_elf_error(tmp_path: Path) -> None:
    with pytest.raises(ElfError, match=r"missing\.ko: cannot read"):
        module_bytes(tmp_path / "missing.ko")


def test_read_modinfo_names_its_source() -> None:
    with pytest.raises(ElfError, match=r"^kernel/x\.ko: not an ELF file$"):
        read_modinfo(b"nonsense bytes", source="kernel/x.ko")


# --- the host's modules -----------------------------------------------------------------


def _newest_moddir() -> Path:
    def version_key(path: Path) -> list[int]:
        return [int(number) for number in re.findall(r"\d+", path.name)]

    candidates = [p for p in Path("/lib/modules").glob("*") if (p / "kernel").is_dir()]
    if not candidates:
        pytest.skip("no kernel modules on this host")
    return max(candidates, key=version_key)


def test_host_ext4_depends_on_jbd2_and_mbcache() -> None:
    found = sorted((_newest_moddir() / "kernel/fs/ext4").glob("ext4.ko*"))
    if not found:
        pytest.skip("ext4 is built in or absent")
    info = module_info(found[0])
    assert {"jbd2", "mbcache"} <= set(info["depends"])
    assert info["name"] == ["ext4"]


def test_host_firmware_lists_match_modinfo() -> None:
    """The firmware= values of a few host modules, as kmod's modinfo prints them."""
    _need("modinfo")
    compared = 0
    for path in sorted((_newest_moddir() / "kernel/drivers").rglob("*.ko*")):
        firmware = module_info(path).get("firmware", [])
        if not firmware:
            continue
        done = subprocess.run(
            ["modinfo", "-F", "firmware", path], capture_output=True, text=True, check=True
        )
        assert firmware == done.stdout.splitlines(), path
        compared += 1
        if compared == 5:
            return
    pytest.skip("no host module names firmware")
