"""The study service: command line, spec, runner and tracking (see docs/design.md)."""

from trainables._version import __version__

__all__ = ["__version__"]
