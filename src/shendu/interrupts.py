"""Stop requests: while a Trainer trains, SIGINT (Ctrl-C, a notebook's interrupt), SIGTERM and a
KeyboardInterrupt raised by one of its callbacks only ask it to stop. `fit` honours the request
between two steps, so an update is never cut in half, and then saves a checkpoint to resume from.

    with stop_requests() as stop:
        while stop.signum is None:
            ...                               # one step
            stop.call(on_step, info)
"""
import signal
import threading
from contextlib import contextmanager


class StopRequest:
    """Whether a stop was asked for: `signum` is the signal that asked (signal.SIGINT or
    SIGTERM), None while nothing has."""

    def __init__(self):
        self.signum = None

    def call(self, callback, arg):
        """Run a callback; a KeyboardInterrupt it raises (between two steps) is a stop request."""
        try:
            callback(arg)
        except KeyboardInterrupt:
            self.signum = signal.SIGINT


@contextmanager
def stop_requests(stop=None):
    """A StopRequest (`stop`, or a new one) that SIGINT and SIGTERM set, in place of their
    handlers, which are put back on exit. Python delivers signals to the main thread only; in
    other threads nothing changes."""
    stop = StopRequest() if stop is None else stop

    def request(signum, frame):
        stop.signum = signum

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for s in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(s) is not None:  # None: set outside Python, could not be restored
                previous[s] = signal.signal(s, request)
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
