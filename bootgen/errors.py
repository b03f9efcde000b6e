"""Error types. Domain code raises these; only the CLI formats them and picks an exit code."""

from __future__ import annotations

import re

_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def printable(text: str) -> str:
    """`text` on one terminal line: control characters (newlines, escape sequences, NUL) and
    undecodable bytes as \\xNN, so that nothing from a file or a description can break a
    message into lines or drive the terminal."""
    def escape(m: re.Match[str]) -> str:
        c = ord(m.group(0))
        return f"\\x{c - 0xdc00 if 0xdc80 <= c <= 0xdcff else c:02x}"

    return _UNPRINTABLE.sub(escape, text)


class BootgenError(Exception):
    """A failure the user can act on: `location` says where, `hint` how to fix it."""

    exit_code = 1

    def __init__(self, message: str, *, location: str = "", hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.location = location
        self.hint = hint

    def format(self) -> str:
        where = f"{self.location}: " if self.location else ""
        hint = f" (hint: {self.hint})" if self.hint else ""
        return printable(f"error: {where}{self.message}{hint}")


class UsageError(BootgenError):
    """Bad command-line usage or bad host description: exit code 2."""

    exit_code = 2


class DescriptionError(UsageError):
    """One or more problems in a host description; all of them are collected before raising."""

    def __init__(self, problems: list[BootgenError]) -> None:
        super().__init__(problems[0].message if problems else "invalid description")
        self.problems = problems

    def format(self) -> str:
        return "\n".join(p.format() for p in self.problems)


class Problems(BootgenError):
    """Several problems found at once (a build's missing files, programs and modules): one
    line each; exit 2 when one of them is a usage or description error, else 1."""

    def __init__(self, problems: list[BootgenError]) -> None:
        super().__init__(problems[0].message if problems else "problems")
        self.problems = problems
        self.exit_code = 2 if any(p.exit_code == 2 for p in problems) else 1

    def format(self) -> str:
        lines = [p.format() for p in self.problems]
        return "\n".join(dict.fromkeys(lines))


def raise_all(problems: list[BootgenError]) -> None:
    """Raise the problems found, if any: one as itself, several as Problems."""
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise Problems(problems)


class Interrupted(KeyboardInterrupt):
    """A signal (SIGTERM, SIGHUP, SIGINT) stopped the command; exit 128 + the signal number.
    Like Ctrl-C's KeyboardInterrupt it is no Exception: `except Exception` never swallows it,
    `finally` blocks and `except BaseException` clean-ups run."""

    def __init__(self, signum: int, name: str) -> None:
        super().__init__(f"interrupted by {name}")
        self.signum = signum
        self.exit_code = 128 + signum

    def format(self) -> str:
        return f"error: {self.args[0]}"


class BuildError(BootgenError):
    """The image could not be built (missing file, library, module...)."""


class CommandError(BuildError):
    """An external command failed; the message names it and carries the tail of its stderr."""


class BootError(BootgenError):
    """A QEMU boot did not reach the expected state."""
