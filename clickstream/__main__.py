"""The ``clickstream`` command line: the console script's entry, and ``python -m clickstream`` where the script is
not on the PATH."""

import sys


def run() -> None:
    """Load the command line and run it. A Ctrl-C while its libraries load (about half a second) ends as one line
    and exit 130, as it does once the command runs, not as a traceback of the imports."""
    try:
        from clickstream.cli import main
    except KeyboardInterrupt:
        sys.stderr.write("clickstream: interrupted while starting (Ctrl-C): nothing was done\n")
        sys.exit(130)
    main(prog_name="clickstream")


if __name__ == "__main__":
    run()
