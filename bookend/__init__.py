"""bookend: build the systemd initrd and exitrd that bookend a Linux system's life."""

__version__ = "0.1.0"
