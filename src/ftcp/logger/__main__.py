"""`python -m ftcp.logger ...`: the same as `ftcp logger ...`."""

import sys

import click

from ftcp.errors import UserError
from ftcp.logger.cli import logger


def main() -> None:
    try:
        logger.main(standalone_mode=False)
    except UserError as e:
        click.secho(f"ftcp logger: {e}", err=True, fg="red")
        sys.exit(2)
    except click.exceptions.Abort:
        sys.exit(1)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
