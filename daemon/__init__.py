"""stocksync: keeps sales channels' stock equal to keyCRM's, seconds after it changes."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("stocksync")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
