"""The compute core: data, models, attribution maps, matching losses, metrics.

Ray Tune trainables (one per compression method) live here too as they arrive; this package
never imports ``study`` or ``analysis``. Submodules are imported where used, so importing the
package stays cheap.
"""

from trainables._version import __version__

__all__ = ["__version__"]
