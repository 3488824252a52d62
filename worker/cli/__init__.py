"""The `intentus` command: one module per group of subcommands.

`commands` builds the parser and runs `worker` and `send`; `records` (with the record
browser), `dlq` and `contract` add their own subcommands; `output` reads durations and prints
tables and JSON.
"""

from worker.cli.commands import main

__all__ = ["main"]
