"""The last stage: a newc cpio streamed from the source files, compressed, written atomically."""

from bookend.archive.atomic import write_atomically
from bookend.archive.compress import DEFAULT_LEVELS, LEVELS, Compression, open_compressor
from bookend.archive.cpio import ArchiveEntry, EntryKind, source_date_epoch, write_cpio

__all__ = [
    "DEFAULT_LEVELS",
    "LEVELS",
    "ArchiveEntry",
    "Compression",
    "EntryKind",
    "open_compressor",
    "source_date_epoch",
    "write_atomically",
    "write_cpio",
]
