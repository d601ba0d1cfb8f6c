"""``python -m proxy.cli``: the ``modelbus`` command."""

from proxy.cli.main import main

main()
