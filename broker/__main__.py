"""``python -m broker``: the command line lives in broker.cli."""

import sys

from broker.cli import main

if __name__ == "__main__":
    sys.exit(main())
