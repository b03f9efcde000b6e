"""A fake "qemu" for the driver tests: behaves like a booting guest on its serial console.

It takes qemu's command line, uses only `-append` (echoed like the kernel does) and its own
`--fake-*` options (passed through QemuConfig.extra), and ignores everything else:

  --fake-hang          stop after the boot lines and never answer
  --fake-stubborn      also ignore SIGHUP/SIGINT/SIGTERM (only SIGKILL ends it)
  --fake-exit=N        "panic" after the boot lines and exit with status N
  --fake-ansi          colour the output with ANSI escapes cut across writes
  --fake-partial       print the login prompt in pieces
  --fake-flood=N       print N numbered lines before the prompt

Like qemu, it puts its terminal in raw mode, ends lines with CRLF and quits on Ctrl-a x.
Otherwise: prompt "login: ", answer each input line with "got: <line>", then print a token
after the first one; "poweroff" ends it with status 0.
"""

from __future__ import annotations

import os
import signal
import sys
import termios
import time
import tty


def out(text: str, end: str = "\r\n") -> None:
    os.write(1, (text + end).encode())


def read_line() -> str | None:
    """One line typed on the console; None on EOF. Ctrl-a x quits like qemu's mux."""
    buf = b""
    escape = False
    while True:
        c = os.read(0, 1)
        if not c:
            return None
        if escape and c == b"x":
            out("QEMU: Terminated")
            sys.exit(0)
        escape = c == b"\x01"
        if escape:
            continue
        if c in (b"\r", b"\n"):
            return buf.decode(errors="replace")
        buf += c


def main(argv: list[str]) -> int:
    opts = dict(a[len("--fake-") :].partition("=")[::2] for a in argv if a.startswith("--fake-"))
    append = argv[argv.index("-append") + 1] if "-append" in argv else ""
    if os.isatty(0):
        tty.setraw(0, termios.TCSANOW)
    if "stubborn" in opts:
        for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)

    out("[    0.000000] Linux version 6.1.0-fake (fake@builder) #1 SMP PREEMPT_DYNAMIC")
    time.sleep(0.05)
    out(f"[    0.010000] Command line: {append}")
    time.sleep(0.05)
    out("[    0.300000] Run /init as init process")
    if "hang" in opts:
        while True:
            time.sleep(60)
    if "exit" in opts:
        out("[    0.400000] Kernel panic - not syncing: Attempted to kill init!")
        return int(opts["exit"])
    for i in range(int(opts.get("flood", "0"))):
        out(f"flood line {i}")
    if "ansi" in opts:
        for piece in ("\x1b[0;3", "2m  OK  \x1b[0m] Reached target \x1b]0;title\x07", "Basic"):
            out(piece, end="")
            time.sleep(0.05)
        out(" System.\x1b[K")
    if "partial" in opts:
        out("Pass", end="")
        time.sleep(0.2)
        out("word: ", end="")
    else:
        out("login: ", end="")
    first = True
    while (line := read_line()) is not None:
        out("")
        if line == "poweroff":
            out("reboot: Power down")
            return 0
        out(f"got: {line}")
        if first:
            out("TOKEN-7f3a")
            first = False
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
