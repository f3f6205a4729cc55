"""The `bmupgrade` executable: a help screen seen before comes from the cache (no typer, no
rich: see bmupgrade/helpcache.py); everything else goes to the typer CLI."""

from __future__ import annotations

import sys


def main() -> None:
    from bmupgrade import helpcache

    kept = helpcache.entry_path(sys.argv[1:])
    if kept is not None and helpcache.serve(kept):
        sys.exit(0)
    from bmupgrade import cli

    if kept is not None:
        helpcache.render_and_store(kept, cli.main)
    else:
        cli.main()


if __name__ == "__main__":
    main()
