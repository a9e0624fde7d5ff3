"""Embedded AWS endpoint for the demo and the tests: moto on loopback, HTTP/1.1 and h2c on one port.

Importing this package is cheap: moto and hypercorn are imported only when a server is built in this process.
"""

from emulator.server import (
    EmulatorHandle,
    EmulatorStartError,
    build_app,
    run_foreground,
    running_emulator,
    serve,
)

__all__ = ["EmulatorHandle", "EmulatorStartError", "build_app", "run_foreground", "running_emulator", "serve"]
