"""The ``strata`` command: groups are registered from sibling modules."""

from __future__ import annotations

import gc
import importlib
import os
import signal
import sys
import traceback
from typing import NamedTuple

import click

import strata
from strata.cli.events import current, json_option, reset
from strata.cli.groups import HelpGroup
from strata.errors import EXIT_INTERNAL, EXIT_USAGE, StrataError, SystemIOError

# strata calls no BLAS routine, yet OpenBLAS starts a spinning thread per core when numpy is
# imported: on a busy machine that costs a command ~50 ms of start-up and as much CPU. Set
# before any numpy import (this module imports none); an explicit setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


class Command(NamedTuple):
    module: str  # defines the command as ``group``
    summary: str  # the first paragraph of that group's help, for ``strata --help``


# Modules load only when their command runs: importing every verb's dependencies cost most
# of a short command's time.  ``strata --help`` lists every command from the summaries here,
# so it loads none (0.28 s -> 0.08 s); a test holds each summary to its group's help.
COMMANDS = {
    "disk": Command(
        "strata.cli.disk",
        "Inspect, compare, convert, create and check disk images (raw, vhd, vhdx, vmdk).",
    ),
    "finalize": Command(
        "strata.cli.finalize",
        "Check the disk (a full shutdown, no BitLocker, no pending reboot, MSI or NGen work, "
        "SCCM state or KMS rearm, ...), read "
        "what the packaging machine wrote (only the disk's allocated blocks), keep the sectors "
        "that differ from the base, and make LAYER:VERSION deployable.",
    ),
    "fs": Command(
        "strata.cli.fs",
        "List and read files in FAT and NTFS volumes (IMAGE[:PART], PART a partition number).",
    ),
    "image": Command(
        "strata.cli.image",
        "Publish layered images from templates, export them for a platform, list, delete.",
    ),
    "layer": Command(
        "strata.cli.layer",
        "Layers (os, platform, app): list, show, history, file delta, delete; the gate alone.",
    ),
    "os": Command(
        "strata.cli.os_layer",
        "OS layers: whole disks (partition table and volumes) imported from an image.",
    ),
    "packaging-disk": Command(
        "strata.cli.packaging",
        "Create the disk a packaging machine installs software onto; list them; prune "
        "cached bases.",
    ),
    "store": Command(
        "strata.cli.store",
        "The chunk store: content-addressed zstd chunks in packs, and the layer catalog.",
    ),
}


def _show_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    # Not click.version_option(__version__): that reads the version (importlib.metadata)
    # on every start-up; here it is read only when --version is given.
    if not value or ctx.resilient_parsing:
        return
    click.echo(f"strata, version {strata.__version__}")
    ctx.exit()


class LazyGroup(HelpGroup):
    # Set by ``main``, whose process runs one command and exits: the objects its imports make
    # are then frozen (gc.freeze) once the command's module has loaded, so no later
    # collection, including the one at exit, walks them.
    settle_heap_after_import = False

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            # The reader went away (``strata fs ls -r IMG | head``): stop quietly, as a
            # success.  Caught here because click's ``main`` turns it into exit status 1,
            # our "difference found".  What stdout still buffers goes to /dev/null, so the
            # flush at exit does not fail again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise click.exceptions.Exit(0) from None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list, as click writes it, from the summaries (no module loaded)."""
        limit = formatter.width - 6 - max(len(name) for name in COMMANDS)
        # A bare click.Command shortens the summary as click shortens a loaded command's help
        # (click.utils.make_default_short_help is deprecated since click 8.2).
        rows = [
            (name, click.Command(name, help=c.summary).get_short_help_str(limit))
            for name, c in COMMANDS.items()
        ]
        with formatter.section("Commands"):
            formatter.write_dl(sorted(rows))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        command: click.Command = importlib.import_module(entry.module).group
        if self.settle_heap_after_import:
            gc.freeze()
            gc.enable()
        return command


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_show_version,
    help="Show the version and exit.",
)
@json_option
def cli() -> None:
    """strata: compose, capture and export layered disk images.

    Exit codes: 0 success, 1 difference or problem found, 2 usage, 3 invalid input,
    4 not found, 5 corrupt image, 6 unsupported, 7 integrity error, 8 wrong state,
    9 not ready to finalize, 10 conflict, 11 the system refused a read or write (disk full,
    I/O error, permission denied), 70 internal error.
    """


class Terminated(BaseException):
    """SIGTERM arrived: unwound like Ctrl-C, so a half-written output is removed."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> None:
    """The console script.  Loading a command makes some 17 000 objects the collector
    tracks, and no garbage; its passes over them while modules load (about 40) and at exit
    cost a VHD convert of an empty disk 8 ms of 92.  So it is off until the command's module
    has loaded, and what exists then is frozen.  Callers of ``run`` keep their own collector
    settings."""
    gc.disable()
    cli.settle_heap_after_import = True  # type: ignore[attr-defined]
    signal.signal(signal.SIGTERM, _terminate)
    sys.exit(run(argv))


def run(argv: list[str] | None = None) -> int:
    reset()
    try:
        result = cli.main(args=argv, prog_name="strata", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except StrataError as e:
        current().error(e.message, e.exit_code, type(e).__name__)
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        if current().json_mode:
            current().error(e.format_message(), EXIT_USAGE, "UsageError")
        else:
            e.show()
        return e.exit_code
    except click.Abort:
        click.echo("strata: aborted", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("strata: interrupted", err=True)
        return 130
    except Terminated:
        click.echo("strata: terminated", err=True)
        return 128 + signal.SIGTERM
    except OSError as e:  # the system refused (a full disk, an I/O error): not a bug
        err = SystemIOError.of(e)
        current().error(err.message, err.exit_code, type(err).__name__)
        return err.exit_code
    except Exception as e:  # a bug: one line for the user, the trace on request
        if os.environ.get("STRATA_DEBUG"):
            traceback.print_exc()
        message = f"internal error: {type(e).__name__}: {e} (set STRATA_DEBUG=1 for the traceback)"
        current().error(message, EXIT_INTERNAL, "InternalError")
        return EXIT_INTERNAL


if __name__ == "__main__":
    main()
