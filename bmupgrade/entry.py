"""The `bmupgrade` executable: a help screen seen before comes from the cache (no typer, no
rich: see bmupgrade/helpcache.py); everything else goes to the typer CLI."""

from __future__ import annotations

import sys


def main() -> None:
    from bmupgrade import helpcache

    args = sys.argv[1:]
    if helpcache.serve(args):
        sys.exit(0)
    from bmupgrade import cli

    if helpcache.is_help_request(args):
        helpcache.render_and_store(args, cli.main)
    else:
        cli.main()


if __name__ == "__main__":
    main()
