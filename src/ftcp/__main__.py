"""`python -m ftcp` is the `ftcp` command."""

from ftcp.cli import main

main()
