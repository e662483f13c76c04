"""``python -m runner.export MANIFEST [--out DIR]``: runner/record/export.py does the work."""

import sys

from runner.record.export import main

if __name__ == "__main__":
    sys.exit(main())
