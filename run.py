"""Entry point: ``python run.py --help``."""

import sys

from metaticket.cli import main

if __name__ == "__main__":
    sys.exit(main())
