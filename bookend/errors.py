"""The one door for errors: every failure bookend reports is a BookendError.

Each carries a one-line message for the user; only the CLI turns them into exit
codes, so the library never calls sys.exit.
"""


class BookendError(Exception):
    """A failure with a one-line message meant for the user."""

    exit_status = 1


class ConfigError(BookendError):
    """Bad input: a configuration file, a flag, or a value in either."""

    exit_status = 2


class SysrootError(BookendError):
    """The tree we build from is missing something or holds something we cannot use."""


class ElfError(BookendError):
    """An ELF file is truncated, corrupt or names a library that cannot be found."""


class ArchiveError(BookendError):
    """Writing, compressing or reading an image failed."""


class CommandError(BookendError):
    """An external command failed."""
