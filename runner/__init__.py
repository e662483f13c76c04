"""Declarative vLLM tensor-parallel runner: recipes in, a verified server and a manifest out."""

import time as _time

__version__ = "0.1.0"

# The overhead clock's zero: when the runner's own code starts, imports included. Not the
# process's creation, which also counts whatever a wrapper did before exec'ing Python.
STARTED = _time.time()
