"""Stages of a long run (export, compile, validate, bench, train): timed, and reported to a callback.

Library code takes a ``progress`` callback and reports through ``Stages``; it never prints.
Each report is an ``Event``: a ``str`` (the plain line, so ``print`` and ``lambda m: ...`` callbacks
keep working) that also carries the stage, the kind of report and the counts. ``console()``
is what the command line shows: a progress bar per stage (``tqdm``) when the stream is a
terminal, plain stage lines with elapsed seconds when it is not (CI logs).

Every ``Stages`` keeps ``timings`` (stage -> seconds), which the JSON outputs record.

The plain lines are for what takes time: a stage is announced once it has run for ``delay``
seconds (1 s), and only an announced stage gets its closing line, so a command that fails at once
still prints its one error line and nothing else.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from typing import Any, Callable, Iterator, TextIO

START, ADVANCE, END, FAIL, NOTE = "start", "advance", "end", "fail", "note"


class Event(str):
    """One report: the text line, plus ``kind`` (start | advance | end | fail | note), ``stage`` (its key),
    ``label``, ``done``/``total`` (units of work, total None when unknown) and ``seconds`` (elapsed
    in the stage)."""

    kind: str
    stage: str
    label: str
    done: int
    total: int | None
    seconds: float

    def __new__(cls, kind: str, stage: str, label: str, done: int = 0, total: int | None = None,
                seconds: float = 0.0, text: str | None = None) -> "Event":
        if text is None:
            if kind == START:
                text = f"{label} ..."
            elif kind == END:
                text = f"{label}: {seconds:.1f} s"
            elif kind == FAIL:
                text = f"{label}: stopped after {seconds:.1f} s"
            elif kind == ADVANCE:
                text = f"{label}: {done}/{total if total is not None else '?'} ({seconds:.1f} s)"
            else:
                text = label
        obj = super().__new__(cls, text)
        obj.kind, obj.stage, obj.label, obj.done, obj.total, obj.seconds = kind, stage, label, done, total, seconds
        return obj


Progress = Callable[[Event], None]


def silent(_: Any) -> None:
    """The default callback: report nothing."""


class Stages:
    """Times named stages and reports them to ``progress``.

    ``with stages("reference", "reference trajectories", total=n) as advance: ... advance()``;
    ``stages.timings`` maps each stage key to its seconds (a key entered twice adds up).
    """

    def __init__(self, progress: Progress | None = None, clock: Callable[[], float] = time.perf_counter):
        self.progress = progress or silent
        self.clock = clock
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str, label: str | None = None, total: int | None = None
                 ) -> Iterator[Callable[[int], None]]:
        label = label or stage.replace("_", " ")
        start = self.clock()
        done = 0
        self.progress(Event(START, stage, label, 0, total))

        def advance(n: int = 1) -> None:
            nonlocal done
            done += n
            self.progress(Event(ADVANCE, stage, label, done, total, self.clock() - start))

        try:
            yield advance
        except BaseException:
            seconds = self.clock() - start
            self._record(stage, seconds)
            self.progress(Event(FAIL, stage, label, done, total, seconds))
            raise
        seconds = self.clock() - start
        self._record(stage, seconds)
        self.progress(Event(END, stage, label, done, total, seconds))

    def _record(self, stage: str, seconds: float) -> None:
        self.timings[stage] = round(self.timings.get(stage, 0.0) + seconds, 3)

    def note(self, text: str, stage: str = "") -> None:
        """A line worth showing that is not a stage (a loss value, a cache reused)."""
        self.progress(Event(NOTE, stage, text))


def console(stream: TextIO | None = None, bars: bool | None = None, indent: str = "  ",
            every: float = 10.0, delay: float = 1.0) -> Progress:
    """The command line's display: a ``tqdm`` bar per stage when ``stream`` (stderr) is a terminal,
    else plain lines: ``<stage> ...`` once a stage has run for ``delay`` seconds, its progress at
    most every ``every`` seconds, and ``<stage>: <seconds> s`` when an announced stage ends."""
    stream = stream or sys.stderr
    if bars is None:
        bars = bool(getattr(stream, "isatty", lambda: False)())
    return _Bars(stream) if bars else _Lines(stream, indent, every, delay)


class _Lines:
    def __init__(self, stream: TextIO, indent: str, every: float, delay: float):
        self.stream, self.indent, self.every, self.delay = stream, indent, every, delay
        self.lock = threading.Lock()
        self.shown: dict[str, bool] = {}            # stage -> announced
        self.timers: dict[str, threading.Timer] = {}
        self.last: dict[str, float] = {}

    def _print(self, text: str) -> None:
        print(f"{self.indent}{text}", file=self.stream, flush=True)

    def _announce(self, stage: str, text: str) -> None:
        with self.lock:
            if stage in self.shown and not self.shown[stage]:
                self.shown[stage] = True
                self._print(text)

    def __call__(self, ev: Any) -> None:
        kind = getattr(ev, "kind", NOTE)
        if kind == START:
            with self.lock:
                self.shown[ev.stage], self.last[ev.stage] = False, 0.0
            if self.delay <= 0:
                self._announce(ev.stage, str(ev))
                return
            timer = threading.Timer(self.delay, self._announce, (ev.stage, str(ev)))
            timer.daemon = True
            self.timers[ev.stage] = timer
            timer.start()
        elif kind in (ADVANCE, END, FAIL):
            if kind != ADVANCE and ev.stage in self.timers:
                self.timers.pop(ev.stage).cancel()
            if kind != ADVANCE or ev.seconds - self.last.get(ev.stage, 0.0) >= self.every:
                self.last[ev.stage] = ev.seconds
                with self.lock:
                    announced = self.shown.get(ev.stage, True)
                    if kind != ADVANCE:
                        self.shown.pop(ev.stage, None)
                    if not announced and ev.seconds >= self.delay and kind != FAIL:
                        self._print(f"{ev.label} ...")           # the timer had not fired yet
                        announced = True
                    if announced:
                        self._print(str(ev))
        else:
            with self.lock:
                self._print(str(ev))


class _Bars:
    def __init__(self, stream: TextIO):
        from tqdm import tqdm

        self.tqdm = tqdm
        self.stream = stream
        self.bars: dict[str, Any] = {}

    def __call__(self, ev: Any) -> None:
        kind = getattr(ev, "kind", NOTE)
        if kind == START:
            import shutil

            # a terminal that reports no size (a bare pty) gets 80 columns, not an invisible bar
            self.bars[ev.stage] = self.tqdm(total=ev.total, desc=ev.label, file=self.stream, leave=True,
                                            ncols=min(120, shutil.get_terminal_size((80, 24)).columns), unit="",
                                            bar_format=None if ev.total else "{desc}: {elapsed}{postfix}")
        elif kind == ADVANCE and ev.stage in self.bars:
            bar = self.bars[ev.stage]
            bar.update(ev.done - bar.n)
        elif kind in (END, FAIL) and ev.stage in self.bars:
            bar = self.bars.pop(ev.stage)
            if ev.total and kind == END:
                bar.update(max(0, ev.done - bar.n))
            bar.set_postfix_str(f"{ev.seconds:.1f} s" if kind == END else "stopped", refresh=False)
            bar.close()
        else:
            self.tqdm.write(f"  {ev}", file=self.stream)


def note_to(progress: Progress | None) -> Callable[[str], None]:
    """A ``log(line)`` function that reports each line as a note (shown between the bars)."""
    return lambda text: (progress or silent)(Event(NOTE, "", text))


def format_timings(timings: dict[str, float]) -> str:
    """``reference 12.3 s, export_encoder 4.1 s, ...`` (the CLI's one-line summary)."""
    return ", ".join(f"{k} {v:.1f} s" for k, v in timings.items())


__all__ = ["Event", "Progress", "Stages", "console", "format_timings", "note_to", "silent"]
