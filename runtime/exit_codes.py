"""The exit codes of every command and of the worker: one owner, read by the CLI on top and the worker below it."""

from __future__ import annotations

from typing import Final

#: Done (``health``: healthy).
OK: Final = 0
#: A failure at run time: an endpoint down, an AWS call failing, records not delivered (``health``: unhealthy, as
#: Docker's HEALTHCHECK reads 1).
RUNTIME: Final = 1
#: Bad usage or configuration, named in one line (as click uses for usage errors).
USAGE: Final = 2
#: The worker found itself unhealthy (a stuck shard) and stopped, for its orchestrator to start it again.
STUCK: Final = 3
#: Stopped by Ctrl-C after saying what it had done (128 + SIGINT, as shells report it).
INTERRUPTED: Final = 130
#: Its output's reader went away (``generate -o - | head``): ended without a word, as a Unix tool killed by SIGPIPE
#: (128 + SIGPIPE), told apart from a failure (1).
READER_GONE: Final = 141
#: Stopped by SIGTERM (docker stop, ECS, timeout) after saying what it had done (128 + SIGTERM).
TERMINATED: Final = 143
