"""``python -m jvpcli``: the same as the ``jvpcli`` console script."""

from jvpcli.cli import main

main()
