"""``python -m psrpc``: the ``psrpc`` command (see psrpc.cli)."""
from .cli import run

run()
