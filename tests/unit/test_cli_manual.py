"""Every subcommand's --help reads as a manual page, and its examples are valid commands."""

from __future__ import annotations

import shlex
import subprocess
import sys

import pytest

from bookend.cli import COMMANDS, make_parser
from bookend.manual import PAGES


def test_every_page_belongs_to_a_command() -> None:
    assert set(PAGES) == set(COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_has_description_examples_and_exit_status(command: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bookend", command, "--help"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    page = PAGES[command]
    first_words = " ".join(page.description.split()[:6])
    assert first_words in " ".join(result.stdout.split())
    for heading in ("examples:", "exit status:"):
        assert f"\n{heading}\n" in result.stdout
    for example, _ in page.examples:
        assert example in result.stdout


def _example_argv(example: str) -> list[str] | None:
    """The arguments of a `bookend ...` example, its shell substitutions made literal."""
    if not example.startswith("bookend "):
        return None
    words = shlex.split(example.split("|")[0].split(">")[0].replace("$(uname -r)", "6.1.0"))
    return words[1:]


@pytest.mark.parametrize(
    "example", [ex for page in PAGES.values() for ex, _ in page.examples if _example_argv(ex)]
)
def test_examples_parse(example: str) -> None:
    argv = _example_argv(example)
    assert argv is not None
    args = make_parser().parse_args(argv)
    assert args.command == argv[0]
