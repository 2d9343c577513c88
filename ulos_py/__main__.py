"""Allows `python -m ulos_py` wherever the console script is not on PATH."""

from ulos_py.cli import main

main()
