"""`python -m t2i_rlhf.services feedback serve ...` / `... label simulate ...`: the service's own
command line (services/cli.py), which starts without importing torch."""

from __future__ import annotations

import sys

from t2i_rlhf.services.cli import main

if __name__ == "__main__":
    sys.exit(main())
