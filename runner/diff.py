"""``python -m runner.diff A B [--json]``: runner/record/diff.py does the work."""

import sys

from runner.record.diff import main

if __name__ == "__main__":
    sys.exit(main())
