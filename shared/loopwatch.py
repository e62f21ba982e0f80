"""Where the event loop is stuck: a diagnosis companion to asyncio debug mode.

asyncio's slow-callback warning (``Executing <Task …> took 0.3 seconds``) names the task,
not the line that held the loop. :class:`LoopWatch` adds that: the loop beats every few
milliseconds, and a watchdog thread that sees no beat for ``threshold_s`` logs the loop
thread's stack at that moment (``event_loop_blocked``, once per stall). On by the same
setting as the debug mode (``slow_callback_ms``); off otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback

log = logging.getLogger("tunefleet.loop")


class LoopWatch:
    def __init__(self, loop: asyncio.AbstractEventLoop, threshold_s: float) -> None:
        self.loop = loop
        self.threshold_s = threshold_s
        self.beat_s = min(0.01, threshold_s / 4)
        self._last = time.monotonic()
        self._stop = threading.Event()
        self._loop_thread = threading.get_ident()
        self._thread = threading.Thread(target=self._watch, name="loopwatch", daemon=True)

    def start(self) -> None:
        """Call from the loop's thread, with the loop running."""
        self._loop_thread = threading.get_ident()
        self._beat()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _beat(self) -> None:
        self._last = time.monotonic()
        if not self._stop.is_set():
            self.loop.call_later(self.beat_s, self._beat)

    def _watch(self) -> None:
        reported = 0.0
        while not self._stop.wait(self.beat_s):
            last = self._last
            stalled = time.monotonic() - last
            if stalled < self.threshold_s or reported == last:
                continue
            reported = last  # one report per stall
            frame = sys._current_frames().get(self._loop_thread)
            stack = "".join(traceback.format_stack(frame, limit=25)) if frame else "?"
            log.warning(
                "event_loop_blocked", extra={"stalled_ms": round(stalled * 1000), "stack": stack}
            )
