"""The bash completion script, run by bash as bash-completion would run it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("completion") / "bookend.bash"
    result = subprocess.run(
        [sys.executable, "-m", "bookend", "completion", "bash"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    path.write_text(result.stdout)
    return path


def complete(script: Path, line: str, cwd: Path | None = None) -> list[str]:
    """What bash offers for `line` (the word being completed is its last, maybe empty)."""
    program = (
        f"source {script}\n"
        f"COMP_LINE={line!r}\n"
        # bash-completion splits the line into words, '=' being a word of its own.
        'read -ra COMP_WORDS <<< "${COMP_LINE//=/ = }"\n'
        '[[ $COMP_LINE == *" " ]] && COMP_WORDS+=("")\n'
        "COMP_CWORD=$((${#COMP_WORDS[@]} - 1))\n"
        "_bookend\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    result = subprocess.run(
        ["bash", "--norc", "-c", program], capture_output=True, text=True, check=True, cwd=cwd
    )
    return [word for word in result.stdout.splitlines() if word]


def test_script_is_valid_bash(script: Path) -> None:
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_subcommands(script: Path) -> None:
    assert complete(script, "bookend bu") == ["build"]
    assert set(complete(script, "bookend ")) >= {"build", "plan", "ls", "check", "diff"}


def test_flags_of_the_subcommand(script: Path) -> None:
    # A prefix several flags share gives each; one flag's own prefix gives only it.
    assert {"--compress", "--compress-level"} <= set(complete(script, "bookend build --comp"))
    assert complete(script, "bookend build --compress-l") == ["--compress-level"]
    assert complete(script, "bookend build --sysr") == ["--sysroot"]
    assert complete(script, "bookend ls --so") == ["--sort"]
    assert complete(script, "bookend ls --comp") == []


def test_actions_of_a_command_and_their_flags(script: Path) -> None:
    assert complete(script, "bookend config s") == ["show"]
    assert complete(script, "bookend config show --or") == ["--origin"]


def test_choices_features_classes_and_hook_points(script: Path) -> None:
    assert complete(script, "bookend build --compress z") == ["zstd"]
    assert complete(script, "bookend build --compress=x") == ["xz"]
    assert complete(script, "bookend plan --add-feature lu") == ["luks"]
    assert complete(script, "bookend build --add-driver-class nv") == ["nvdimm", "nvme"]
    assert complete(script, "bookend build --hook pre-m") == ["pre-mount="]


def test_kernel_versions_from_lib_modules(script: Path) -> None:
    installed = sorted(p.name for p in Path("/lib/modules").iterdir())
    if not installed:
        pytest.skip("no /lib/modules here")
    assert sorted(complete(script, "bookend build --kver ")) == installed


def test_paths(script: Path, tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "image.img").write_bytes(b"")
    assert sorted(complete(script, "bookend ls im", cwd=tmp_path)) == ["image.img", "images"]
    assert complete(script, "bookend build --sysroot im", cwd=tmp_path) == ["images"]
