"""``python -m unlearn_audit``: the CLI, as launchers start it (``torchrun -m unlearn_audit``)."""

from .cli import _console_main

_console_main()
