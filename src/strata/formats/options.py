"""``-o key=value,...`` creation options, declared per format."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from strata.errors import InvalidInput
from strata.units import parse_size


class FormatOption(NamedTuple):
    name: str
    help: str
    default: Any = None
    parse: Callable[[str], Any] = str
    choices: Sequence[str] = ()

    def convert(self, text: str) -> Any:
        if self.choices and text not in self.choices:
            raise InvalidInput(
                f"option {self.name}={text!r}: expected one of {', '.join(self.choices)}"
            )
        try:
            return self.parse(text)
        except InvalidInput as e:
            raise InvalidInput(f"option {self.name}: {e.message}") from e
        except ValueError as e:
            raise InvalidInput(f"option {self.name}={text!r}: {e}") from e


def size_option(name: str, help: str, default: int | None = None) -> FormatOption:
    return FormatOption(name, help, default, parse_size)


def bool_option(name: str, help: str, default: bool = False) -> FormatOption:
    return FormatOption(name, help, default, parse_bool)


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("on", "true", "yes", "1"):
        return True
    if lowered in ("off", "false", "no", "0"):
        return False
    raise InvalidInput(f"{text!r} is not on/off")


def split_options(text: str) -> list[tuple[str, str]]:
    """Split ``a=1,b=2``; a doubled comma is a literal comma, as in qemu-img."""
    pairs: list[tuple[str, str]] = []
    for item in text.replace(",,", "\0").split(","):
        item = item.replace("\0", ",").strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep:
            raise InvalidInput(f"option {key!r} needs a value (key=value)")
        pairs.append((key.strip(), value.strip()))
    return pairs


def parse_options(
    fmt: str, declared: Sequence[FormatOption], texts: Sequence[str]
) -> dict[str, Any]:
    by_name = {opt.name: opt for opt in declared}
    values: dict[str, Any] = {opt.name: opt.default for opt in declared}
    for text in texts:
        for key, value in split_options(text):
            if key not in by_name:
                known = ", ".join(sorted(by_name)) or "none"
                raise InvalidInput(f"format {fmt} has no option {key!r} (options: {known})")
            values[key] = by_name[key].convert(value)
    return values


def describe(declared: Sequence[FormatOption]) -> Mapping[str, str]:
    return {opt.name: opt.help for opt in declared}
