"""One error tree for strata.

Each class carries the process exit code the CLI uses for it and a message
template (its docstring), filled from keyword arguments.  A user never sees a
traceback for these: the CLI prints ``strata: <message>`` and exits with
``exit_code``.

Exit codes (documented in the README):
    0  success
    1  a comparison found a difference, or a check found a problem
    2  command-line usage error (unknown option, missing argument)
    3  InvalidInput      bad argument or option value (an output path that cannot be one)
    4  NotFound          a path, layer, version, chunk or parent that does not exist
    5  CorruptImage      on-disk structure fails validation
    6  Unsupported       a valid but unsupported format or feature
    7  IntegrityError    stored data does not match its id or checksum
    8  StateError        an operation not allowed in the object's current state
    9  NotReady          the finalize integrity gate refused a disk
   10  Conflict          concurrent modification or lock contention
   11  SystemIOError     the system refused a read or write (permission, read-only or full
                         file system, I/O error)
   70  internal error (a bug: please report it)
"""

from __future__ import annotations

from typing import Any, ClassVar


class StrataError(Exception):
    """{message}"""

    exit_code: ClassVar[int] = 70

    def __init__(self, message: str | None = None, **fields: Any) -> None:
        self.fields = fields
        if message is None:
            template = (type(self).__doc__ or "{message}").strip().splitlines()[0]
            try:
                message = template.format(**fields)
            except (KeyError, IndexError):
                message = f"{template} {fields}"
        super().__init__(message)

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else type(self).__name__


class InvalidInput(StrataError, ValueError):
    """invalid input: {message}"""

    exit_code = 3


class NotFound(StrataError, FileNotFoundError):
    """not found: {what}"""

    exit_code = 4


class CorruptImage(StrataError):
    """{path}: corrupt {structure}: {problem} (field {field}, file offset {offset})"""

    exit_code = 5

    def __init__(
        self,
        message: str | None = None,
        *,
        path: object = "<image>",
        structure: str = "image",
        problem: str = "invalid",
        field: str = "-",
        offset: int | None = None,
        **fields: Any,
    ) -> None:
        self.path = str(path)
        self.structure = structure
        self.problem = problem
        self.field = field
        self.offset = offset
        if message is None:
            where = (
                f" (field {field}, file offset {offset:#x})"
                if offset is not None
                else (f" (field {field})" if field != "-" else "")
            )
            message = f"{self.path}: corrupt {structure}: {problem}{where}"
        super().__init__(message, **fields)


class TruncatedImage(CorruptImage):
    """the file ends before a structure it declares"""


class Unsupported(StrataError):
    """unsupported: {what}"""

    exit_code = 6


class IntegrityError(StrataError):
    """integrity error: {what}"""

    exit_code = 7


class StateError(StrataError):
    """{what}"""

    exit_code = 8


class NotReady(StrataError):
    """the disk is not ready to finalize: {what}"""

    exit_code = 9


class Conflict(StrataError):
    """conflict: {what}"""

    exit_code = 10


# The allowed directories are where a differencing image's parents may be opened, which
# --allow-dir sets: so every command that opens a chain says how to allow one (the template is
# the docstring's first line, hence its length).
class PathOutsideAllowed(InvalidInput):
    """{path} lies outside the allowed directories {allowed} (name its directory with --allow-dir)"""  # noqa: E501


class SystemIOError(StrataError, OSError):
    """{what}"""

    exit_code = 11

    @classmethod
    def of(cls, e: OSError, path: object = None) -> SystemIOError:
        """The one line a user sees for an OSError the system raised: what and where (the
        error's own file name, else ``path``: a failed write or fsync names no file)."""
        where = e.filename or path
        return cls(what=f"{where}: {e.strerror or e}" if where else str(e.strerror or e))


EXIT_DIFFERENT = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 70
