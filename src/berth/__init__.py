"""berth: container-based operating system virtualization for Linux."""

__version__ = "0.1.0"
