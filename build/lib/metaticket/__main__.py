"""``python -m metaticket ...``: the same commands as ``run.py`` and the ``metaticket`` console script."""

import sys

from metaticket.cli import main

if __name__ == "__main__":
    sys.exit(main())
