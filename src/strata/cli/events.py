"""How commands talk to people and machines.

With ``--json`` every command prints one JSON object per line on stdout:
``{"event": "progress" | "warning" | "integrity" | "result" | "error", ...}``.
Without it, results go to stdout as text and a progress bar to stderr (only
when stderr is a terminal).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from itertools import islice
from typing import Any

import click

Progress = Callable[[int, int], None]


class Reporter:
    def __init__(self, json_mode: bool = False) -> None:
        self.json_mode = json_mode

    def emit(self, event: str, **fields: Any) -> None:
        print(json.dumps({"event": event, **fields}, default=str), flush=True)

    def result_streamed(self, fields: dict[str, Any], key: str, items: Iterable[str]) -> None:
        """The ``result`` line ``emit`` would write for ``fields``, but with the list at
        ``key`` written as ``items`` come (JSON texts of runs of its items, each run joined
        by ", "): a long listing is never held whole as one string."""
        names = list(fields)
        at = names.index(key)
        before = {"event": "result", **{k: fields[k] for k in names[:at]}}
        after = {k: fields[k] for k in names[at + 1 :]}
        out = sys.stdout
        out.write(f"{json.dumps(before, default=str)[:-1]}, {json.dumps(key)}: [")
        separator = ""
        try:
            for text in items:
                if text:
                    out.write(separator + text)
                    separator = ", "
        except BaseException:
            out.write("\n")  # the cut line stays alone: the error event gets a line of its own
            raise
        out.write(f"], {json.dumps(after, default=str)[1:]}\n" if after else "]}\n")
        out.flush()

    def result(self, text: str | None = None, **fields: Any) -> None:
        if self.json_mode:
            self.emit("result", **fields)
        elif text is not None:
            click.echo(text)

    def warning(self, message: str, **fields: Any) -> None:
        if self.json_mode:
            self.emit("warning", message=message, **fields)
        else:
            click.echo(f"strata: warning: {message}", err=True)

    def error(self, message: str, exit_code: int, kind: str) -> None:
        if self.json_mode:
            # stdout may refuse the event too (a full device): then say it as text mode does.
            with contextlib.suppress(OSError):
                self.emit("error", message=message, exit_code=exit_code, kind=kind)
                return
        click.echo(f"strata: {message}", err=True)

    @contextmanager
    def progress(self, stage: str) -> Iterator[Progress]:
        if self.json_mode:
            yield _json_progress(self, stage)
        elif sys.stderr.isatty():
            with _bar(stage) as update:
                yield update
        else:
            yield _silent


def _silent(done: int, total: int) -> None:
    return None


def _json_progress(reporter: Reporter, stage: str, every: float = 0.5) -> Progress:
    last = [0.0]

    def update(done: int, total: int) -> None:
        now = time.monotonic()
        if done >= total or now - last[0] >= every:
            last[0] = now
            reporter.emit("progress", stage=stage, done=done, total=total)

    return update


@contextmanager
def _bar(stage: str) -> Iterator[Callable[[int, int], None]]:
    state: dict[str, Any] = {"bar": None, "shown": 0}

    def update(done: int, total: int) -> None:
        if state["bar"] is None:
            state["bar"] = click.progressbar(
                length=max(total, 1), label=stage, file=sys.stderr, show_percent=True, show_eta=True
            )
            state["bar"].__enter__()
        state["bar"].update(max(0, done - state["shown"]))
        state["shown"] = max(state["shown"], done)

    try:
        yield update
    finally:
        if state["bar"] is not None:
            state["bar"].__exit__(None, None, None)


_current = Reporter()


def current() -> Reporter:
    return _current


def reset() -> Reporter:
    """A text reporter for a new invocation (``--json`` of an earlier one in the same
    process does not carry over)."""
    global _current
    _current = Reporter()
    return _current


def set_json(enabled: bool) -> Reporter:
    global _current
    _current = Reporter(json_mode=enabled or _current.json_mode)
    return _current


def json_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--json`` on any command: switch the reporter to JSON lines."""

    def enable(_ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
        if value:
            set_json(True)
        return value

    return click.option(
        "--json",
        "json_mode",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=enable,
        help="Print one JSON event per line (progress, warning, integrity, result, error).",
    )(func)


def json_runs(items: Iterable[Any], size: int = 4096) -> Iterator[str]:
    """``items`` as the JSON text of a list's items, ``size`` items a run (for
    ``Reporter.result_streamed``)."""
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield json.dumps(batch, default=str)[1:-1]
