"""``python -m study.cli``: the same as the ``apc`` console script."""

from study.cli._app import main

raise SystemExit(main())
