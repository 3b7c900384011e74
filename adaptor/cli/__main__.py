"""``python -m adaptor.cli``: the same as the ``adaptor`` command."""

from adaptor.cli import main

main()
