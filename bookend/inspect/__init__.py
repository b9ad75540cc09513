"""Looking into images, bookend's and other tools': list, extract, compare and check.

Everything here reads an image through bookend.archive.reader, so dracut's,
initramfs-tools' and mkinitcpio's images (several segments, any compression the kernel
knows) are read the same way as bookend's own.
"""

# `bookend ls --sort`: here, so the command line offers them without importing the reader.
SORTS = ("name", "size")
