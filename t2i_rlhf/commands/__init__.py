"""Subcommands of the `t2i-rlhf` console script: one module per command group, each with a
`register(subparsers)` function that adds its parser and sets `func`."""
