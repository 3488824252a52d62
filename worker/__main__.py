"""`python -m worker` is `intentus worker`; `python -m worker records …` is `intentus records …`."""

import sys

from worker.cli import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    if not argv or argv[0] not in ("worker", "send", "records", "-h", "--help"):
        argv = ["worker", *argv]
    sys.exit(main(argv))
