"""``python -m clickstream``: the ``clickstream`` command line, where the console script is not on the PATH."""

from clickstream.cli import main

if __name__ == "__main__":
    main(prog_name="clickstream")
