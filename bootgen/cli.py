"""The `bootgen` command line. Turns BootgenErrors into one-line messages and exit codes:
0 ok, 1 build/boot failure, 2 usage or description error; `--debug` shows tracebacks."""

from __future__ import annotations

import hashlib
import os
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

import click

from . import __version__, description
from .config.schema import FLAVORS
from .errors import BootgenError, Interrupted, UsageError, printable
from .paths import on_signal
from .report import inspect


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def _progress(msg: str) -> None:
    click.echo(f"  … {msg}", err=True)


def _ask_passphrase(prompt: str, again: bool) -> str | None:
    """A passphrase stage one asks for in a verification boot: typed at this terminal (not
    echoed), or one line of standard input when that is no terminal; None: no answer."""
    import getpass

    text = printable(prompt) + (" (asked again: the last one did not open it)" if again else "")
    if sys.stdin.isatty():
        try:
            return getpass.getpass(f"  … {text} ")
        except EOFError:
            return None
    line = sys.stdin.readline()
    return line.rstrip("\n") if line else None


def _one_line(e: BaseException) -> BootgenError | None:
    """The BootgenError an unexpected exception from deep code stands for, or None (a bug)."""
    if isinstance(e, OSError):
        where = str(e.filename) if e.filename else ""
        return BootgenError(e.strerror or str(e), location=where)
    if isinstance(e, ValueError) and "null byte" in str(e):
        return UsageError("a path contains a NUL byte", hint="no file name can hold one")
    if isinstance(e, RecursionError):
        return BootgenError("input nested too deeply", hint="is this the right file?")
    if isinstance(e, MemoryError):
        return BootgenError("out of memory", hint="is this the right file?")
    return None


def _stdout_closed() -> bool:
    """Whether standard output is a pipe nobody reads any more (poll says POLLERR)."""
    import select

    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poll.poll(0))
    except (OSError, ValueError):
        return False


class _Group(click.Group):
    """Turns every BootgenError into its one-line message and exit code; SIGTERM and SIGHUP
    stop a command the way Ctrl-C does (temp files removed, exit 128 + signal)."""

    def invoke(self, ctx: click.Context) -> Any:
        saved = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
                saved[sig] = signal.signal(sig, on_signal)
        try:
            return super().invoke(ctx)
        except Interrupted as e:
            click.echo(e.format(), err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            ctx.exit(130)
        except BrokenPipeError as e:
            if not _stdout_closed():
                error = _one_line(e)
                assert error is not None
                click.echo(error.format(), err=True)
                ctx.exit(error.exit_code)
            # the reader went away (`bootgen ls IMAGE | head`): stop quietly, as cat does
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(128 + signal.SIGPIPE)
        except click.UsageError as e:  # one line too, naming the command's help
            command = f"bootgen {e.ctx.command.name} --help" if e.ctx and e.ctx.command.name \
                and e.ctx.parent else "bootgen --help"
            click.echo(printable(f"error: {e.format_message()} (hint: {command})"), err=True)
            ctx.exit(2)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as e:
            error = e if isinstance(e, BootgenError) else _one_line(e)
            if error is None:
                raise  # a bug: its traceback is the report
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            click.echo(error.format(), err=True)
            ctx.exit(error.exit_code)
        finally:
            for sig, handler in saved.items():
                signal.signal(sig, handler)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.version_option(__version__, prog_name="bootgen")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Generate, inspect and boot-test initrds from a declarative host description."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


# Files bootgen reads: its own reader says what is wrong with them (one line, exit 2).
HOST = click.Path(path_type=Path, readable=False)

flavor_option = click.option("--flavor", type=click.Choice(FLAVORS),
                             help="Stage-one flavour (default: boot.flavor of the description).")
kver_option = click.option("--kernel-version", "kver", metavar="KVER",
                           help="Kernel release (default: kernel.version or the newest installed).")


@main.command()
@click.argument("host", type=HOST)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the image (the UKI with boot.output = \"uki\").")
@flavor_option
@kver_option
@click.option("--manifest", "manifest_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the bill of materials (JSON) here.")
@click.option("--secrets-out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write secrets as a separate archive instead of appending them.")
@click.option("--uki", "uki_output", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write a unified kernel image (EFI binary, settings in [uki]).")
@click.option("--force", is_flag=True,
              help="Replace the running kernel's initrd (the old one is kept as NAME.bootgen-old).")
def build(host: Path, output: Path | None, flavor: str | None, kver: str | None,
          manifest_path: Path | None, secrets_out: Path | None, uki_output: Path | None,
          force: bool) -> None:
    """Build the initrd (or unified kernel image) for HOST (a .toml description)."""
    from .errors import UsageError
    from .image.build import build as do_build

    if output is None and uki_output is None:
        raise UsageError("nothing to write", hint="give -o IMAGE and/or --uki OUT.efi")
    desc = description.load(host)
    r = do_build(desc, output=output, flavor=flavor, kver=kver, manifest_path=manifest_path,
                 secrets_out=secrets_out, uki_output=uki_output, progress=_progress,
                 force=force)
    spec = r.image.spec
    files = sum(1 for e in r.image.entries if e.kind == "file")
    initrd_out = output if desc.boot.output == "initrd" else None
    uki_out = uki_output or (output if desc.boot.output == "uki" else None)
    click.echo(f"built {initrd_out or uki_out}  ({spec.flavor} stage one, kernel {spec.kver})")
    click.echo(f"  entries   {r.checked.members} ({files} files, {len(r.image.modules)} kernel "
               f"modules, {r.checked.elf_files} ELF files checked)")
    click.echo(f"  size      {_mb(r.packed.raw_size)} raw, {_mb(len(r.packed.main))} "
               f"{spec.compression}" + (f", +{_mb(len(r.packed.early))} microcode"
                                        if r.packed.early else "")
               + (f", +{len(r.packed.secrets)} bytes secrets" if r.packed.secrets else ""))
    click.echo(f"  features  {', '.join(spec.features)}")
    segs = ", ".join(f"{s.name} {_mb(len(s.data))}{' (cached)' if s.cached else ''}"
                     for s in r.packed.segments)
    click.echo(f"  segments  {segs}")
    click.echo(f"  sha256    {r.sha256}" + ("" if initrd_out else " (the initrd)"))
    if r.uki is not None:
        from .image import uki

        parts = uki.read(r.uki)
        click.echo(f"  uki       {uki_out}: {_mb(len(r.uki))}, "
                   f"{'signed' if parts.signed else 'unsigned'}, "
                   f"pcr11 {uki.pcr11(parts.payloads)[:16]}…, "
                   f"sha256 {hashlib.sha256(r.uki).hexdigest()}")
    click.echo(f"  time      {r.seconds:.2f} s")
    for w in (*r.image.warnings, *r.packed.warnings):
        click.echo(printable(f"warning: {w}"), err=True)


@main.command()
@click.argument("host", type=HOST)
@flavor_option
@kver_option
def show(host: Path, flavor: str | None, kver: str | None) -> None:
    """Show the resolved description and what the image will contain, and why."""
    from .image.build import assemble
    from .image.render import modules_to_load

    desc = description.load(host)
    image = assemble(desc, flavor=flavor, kver=kver)
    spec = image.spec
    click.echo(f"host        {host}")
    click.echo(f"flavor      {spec.flavor}")
    click.echo(f"kernel      {spec.kver}")
    click.echo(f"compression {spec.compression}")
    click.echo(f"features    {', '.join(spec.features)}")
    for fs in desc.boot_filesystems:
        click.echo(f"mount       {fs.device} on {fs.mountpoint} ({fs.fstype}, "
                   f"{','.join(fs.options) or 'defaults'})")
    click.echo(f"load        {' '.join(modules_to_load(spec)) or '-'}")
    click.echo(f"modules     {len(image.modules)} in the image"
               + (f"; built in: {' '.join(image.builtin_modules)}" if image.builtin_modules
                  else ""))
    click.echo("contents:")
    for e in image.entries:
        extra = f" -> {e.target}" if e.kind == "symlink" else ""
        click.echo(f"  {e.path}{extra}    [{e.reason}]")
    for w in image.warnings:
        click.echo(printable(f"warning: {w}"), err=True)


@main.command(name="ls")
@click.argument("image", type=HOST)
def ls_cmd(image: Path) -> None:
    """List the contents of any newc initrd, segment by segment, or of a unified kernel
    image (its sections, then the initrd inside)."""
    for line in inspect.ls_any(image):
        click.echo(line)


@main.command()
@click.argument("a", type=HOST)
@click.argument("b", type=HOST)
def diff(a: Path, b: Path) -> None:
    """What differs between two images (and why, from manifests beside them). Exit 0 if they
    hold the same, 1 if anything differs, 2 if one cannot be read."""
    lines = inspect.diff_lines(a, b)
    for line in lines:
        click.echo(line)
    if lines:
        sys.exit(1)


boot_options = [
    click.option("--kernel", "kernel", type=click.Path(dir_okay=False, exists=True),
                 help="Kernel image to boot (default: /boot/vmlinuz-<kernel version>)."),
    click.option("--append", "append", multiple=True, metavar="PARAMS",
                 help="Extra kernel parameters for this run (repeatable)."),
    click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
                 help="Where images and console logs go (default: ~/.cache/bootgen/verify/)."),
]


clock_option = click.option(
    "--clock", type=click.Choice(["real", "instructions"]), default="real", show_default=True,
    help="The guest's clock. 'instructions' counts one guest nanosecond per instruction (QEMU "
    "-icount, TCG; waits take real time): timings then measure the work stage one does, the "
    "same on a busy or a quiet machine.")


def _boot_options(f: Any) -> Any:
    for opt in reversed(boot_options):
        f = opt(f)
    return f


def _stage_table(r: Any) -> str:
    parts = [f"{stage} {mark.guest:.2f}s" for stage, mark in r.stages.items()
             if stage != "kernel"]
    return ", ".join(parts)


@main.command()
@click.argument("host", type=HOST)
@click.option("--flavor", type=click.Choice([*FLAVORS, "both"]),
              help="Flavour to boot; 'both' runs the two side by side (default: boot.flavor).")
@kver_option
@_boot_options
@click.option("--uki", "as_uki", is_flag=True,
              help="Boot a unified kernel image under UEFI (OVMF) from an ESP, Secure Boot "
              "enforced when [uki] signs (default with boot.output = \"uki\").")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--timeline", "timeline_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Draw every unit (systemd) or step (scripted) of stage one as SVG here "
              "(FILE-<flavour>.svg for both) and list the slowest.")
@clock_option
@click.option("--host-disks", "host_disks", is_flag=True,
              help="Boot against this machine's own disks (those the description names), "
              "read-only behind copy-on-write overlays, in verification mode: stage one checks "
              "the real root and powers off instead of switching to it. Needs read access to "
              "the disks (root or the disk group).")
@click.option("--disk", "disk_paths", multiple=True, metavar="PATH",
              help="Like --host-disks, with these block devices or image files instead of the "
              "lookup (repeatable).")
@click.option("--image", "image", type=click.Path(dir_okay=False, path_type=Path),
              help="With --host-disks or --disk: boot this image, built before by `bootgen "
              "build` for --flavor, instead of building it again.")
def verify(host: Path, flavor: str | None, kver: str | None, kernel: str | None,
           append: tuple[str, ...], workdir: Path | None, as_uki: bool, as_json: bool,
           timeline_path: Path | None, clock: str, host_disks: bool,
           disk_paths: tuple[str, ...], image: Path | None) -> None:
    """Build HOST's initrd and prove it boots in QEMU against disks mirroring HOST (or, with
    --host-disks or --disk, against this machine's own disks, read-only)."""
    import json

    from .report import steps
    from .vm import verify as v
    from .vm.timeline import TIMELINE_PARAMS

    desc = description.load(host)
    flavors = list(FLAVORS) if flavor == "both" else [flavor or desc.boot.flavor]
    params = [p for a in append for p in a.split()]
    if timeline_path is not None:
        params += TIMELINE_PARAMS
    uki = v.UkiBoot() if as_uki or desc.boot.output == "uki" else None
    if image is not None and not (host_disks or disk_paths):
        raise UsageError("--image needs --host-disks or --disk", location="--image")
    if host_disks or disk_paths:
        if as_uki:
            raise UsageError("--uki and --host-disks/--disk do not go together yet",
                             location="--uki")
        if clock != "real":
            raise UsageError("--clock instructions is for test disks, not --host-disks/--disk",
                             location="--clock")
        from .vm import hostverify

        results = hostverify.host_verify(
            desc, flavors, disks=list(disk_paths) if disk_paths else None,
            workdir=workdir or v.default_workdir(desc), kernel=kernel, kver=kver, append=params,
            progress=_progress, ask=_ask_passphrase, image=image)
    else:
        results = v.verify(desc, flavors, workdir=workdir, kernel=kernel, kver=kver,
                           append=params, progress=None if as_json else _progress, uki=uki,
                           clock=clock)
    for r in results:
        if timeline_path is None:
            break
        out = steps.output_path(timeline_path, r.flavor, len(results) > 1)
        what = "units" if r.flavor == "systemd" else "steps"
        steps.write(out, f"{host.stem}: {r.flavor} stage one, {what} by guest uptime",
                    f"one boot in QEMU; {'PASS' if r.passed else 'FAIL'}", r.spans)
        if not as_json:
            click.echo(f"{r.flavor}: timeline of {len(r.spans)} {what} in {out}; slowest:")
            for line in steps.table(r.spans):
                click.echo(f"  {line}")
    if as_json:
        click.echo(json.dumps([r.to_json() for r in results], indent=1))
    else:
        for r in results:
            state = "PASS" if r.passed else "FAIL"
            click.echo(f"{state}  {r.flavor:<8} " + (f"[{r.variant}] " if r.variant else "")
                       + f"image {_mb(r.image_size)} built in {r.build_seconds:.2f}s; booted "
                       f"in {r.wall_seconds:.1f}s host time"
                       + (f", {r.prompts} passphrase prompt(s)" if r.prompts else ""))
            if r.stages:
                click.echo(f"      guest uptime: {_stage_table(r)}")
            if r.variant == "host disks" and r.passed:
                f = r.result
                click.echo(printable(f"      root={f.get('root')} fstype={f.get('fstype')} "
                                     f"init={f.get('init')} os=\"{f.get('os', '')}\" "
                                     f"mounts={f.get('mounts')}"))
            if not r.passed:
                click.echo(f"      {r.reason}")
                click.echo(f"      console log: {r.log}; last lines:")
                for line in r.tail:
                    click.echo(f"      | {line}")
    if not all(r.passed for r in results):
        sys.exit(1)


@main.command()
@click.argument("host", type=HOST)
@flavor_option
@click.option("--break", "stage", type=click.Choice(["pre-udev", "pre-mount", "pre-pivot"]),
              default="pre-mount", show_default=True, help="Where stage one stops.")
@kver_option
@_boot_options
def shell(host: Path, flavor: str | None, stage: str, kver: str | None, kernel: str | None,
          append: tuple[str, ...], workdir: Path | None) -> None:
    """Boot HOST's initrd in QEMU and give you its console at a breakpoint (Ctrl-a x quits)."""
    from .vm import verify as v

    desc = description.load(host)
    params = [p for a in append for p in a.split()]

    def ready() -> None:
        click.echo("== connected to the guest console; Ctrl-a x quits QEMU", err=True)

    status = v.shell(desc, flavor or desc.boot.flavor, stage, workdir=workdir, kernel=kernel,
                     kver=kver, append=params, progress=_progress, before_interact=ready)
    sys.exit(0 if status == 0 else 1)


@main.command()
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the description here (default: standard output).")
@click.option("--force", is_flag=True, help="Replace an existing --output file.")
@click.option("--root", type=click.Path(file_okay=False, exists=True, path_type=Path),
              default=Path("/"), show_default=True,
              help="Read this tree instead of /: one captured by tools/capture-host.sh "
              "(--mounted DIR captures a system mounted at DIR, as an installer sees it).")
@kver_option
def detect(output: Path | None, force: bool, root: Path, kver: str | None) -> None:
    """Describe this machine: a commented host description from /proc, /etc, sysfs and udev."""
    from .detect.describe import detect as do_detect
    from .paths import Output, check_outputs, write_outputs

    if output is not None and output.exists() and not force:
        raise UsageError(f"{output} exists", hint="review it, or pass --force to replace it")
    if output is not None:
        check_outputs([Output("-o", output)])
    found = do_detect(root, kver)
    for w in found.warnings:
        click.echo(f"warning: {w}", err=True)
    if output is None:
        click.echo(found.text, nl=False)
    else:
        write_outputs([Output("-o", output, data=found.text.encode())])
        click.echo(f"wrote {output}; review it, then: bootgen check {output} --host", err=True)


@main.command()
@click.argument("host", type=HOST)
@click.option("--flavor", type=click.Choice([*FLAVORS, "both"]),
              help="Flavour to check; 'both' checks the two (default: boot.flavor).")
@click.option("--host", "against_host", is_flag=True,
              help="Also check it against this machine: devices, filesystem types, LUKS UUIDs, "
              "modules of the target kernel, keyfiles, the kernel command line. Exit 1 if any "
              "problem.")
@click.option("--root", type=click.Path(file_okay=False, exists=True, path_type=Path),
              default=Path("/"), show_default=True,
              help="With --host: read this tree instead of / (sysfs, udev, /proc, /etc).")
@kver_option
def check(host: Path, flavor: str | None, against_host: bool, root: Path,
          kver: str | None) -> None:
    """Everything a build does but packing: the description, then the programs, libraries,
    modules and files it needs on this machine. Every problem at once; exit 2 for problems of
    the description, 1 for what this machine lacks. With --host instead: the description
    against the machine it describes (its devices, modules, keyfiles, command line), one line
    per problem, exit 1 when any."""
    desc = description.load(host)
    if against_host:
        from .detect.hostcheck import check_host

        problems = check_host(desc, root, kver)
        for p in problems:
            click.echo(printable(f"{host}: {p}"))
        if problems:
            sys.exit(1)
        click.echo(f"{host}: ok, and this machine matches it")
        return
    from .image.build import dry_run

    flavors = list(FLAVORS) if flavor == "both" else [flavor or desc.boot.flavor]
    images = dry_run(desc, flavors, kver=kver)
    for image in images:
        click.echo(f"{host}: ok ({image.spec.flavor} stage one, kernel {image.spec.kver}, "
                   f"{len(image.entries)} entries)")
        for w in image.warnings:
            click.echo(printable(f"warning: {w}"), err=True)


@main.command(name="install-hooks")
@click.option("--remove", is_flag=True, help="Remove the hooks bootgen installed.")
@click.option("--prefix", type=click.Path(file_okay=False, path_type=Path), default=Path("/"),
              show_default=True, help="Install below this folder (packaging, tests).")
@click.option("--config", "config", default="/etc/bootgen/host.toml", show_default=True,
              help="The description the hooks build from.")
@click.option("--bootgen", "program", metavar="PATH",
              help="The bootgen the hooks run (default: this one).")
def install_hooks(remove: bool, prefix: Path, config: str, program: str | None) -> None:
    """Rebuild the initrd when a kernel is installed: a kernel-install plugin and Debian
    /etc/kernel hooks (the old initrd stays until the new one is complete)."""
    from .detect import hooks

    if remove:
        gone = hooks.remove(prefix)
        for p in gone:
            click.echo(f"removed {p}")
        if not gone:
            click.echo("no bootgen hooks installed", err=True)
        return
    for p in hooks.install(prefix, bootgen=program, host=config):
        click.echo(f"installed {p}")
    if not (prefix / config.lstrip("/")).is_file():
        click.echo(f"note: {config} does not exist yet: bootgen detect -o {config}", err=True)


@main.command()
@click.argument("host", type=HOST)
@click.option("--runs", type=click.IntRange(min=1), default=3, show_default=True,
              help="Boots per flavour.")
@click.option("--svg", "svg_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the boot timeline (default: ./HOST-timeline.svg).")
@click.option("--png", is_flag=True, help="Also write a PNG beside the SVG (rsvg-convert or "
              "ImageMagick's convert, when installed).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@clock_option
@kver_option
@_boot_options
def compare(host: Path, runs: int, svg_path: Path | None, png: bool, as_json: bool,
            clock: str, kver: str | None, kernel: str | None, append: tuple[str, ...],
            workdir: Path | None) -> None:
    """Scripted or systemd? Build both, boot each N times in QEMU, compare them. Exit 1 if a
    boot failed."""
    import json

    from .paths import Output, check_outputs, write_outputs
    from .report import compare as cmp
    from .report import svg

    desc = description.load(host)
    params = [p for a in append for p in a.split()]
    out = svg_path or Path(f"{host.stem}-timeline.svg")
    check_outputs([Output("--svg", out)], [host])  # before the boots, not after
    c = cmp.compare(desc, runs, workdir, kernel=kernel, kver=kver, append=params,
                    progress=None if as_json else _progress, clock=clock)
    write_outputs([Output("--svg", out, cmp.timeline_svg(c).encode())], [host])
    picture, why = svg.to_png(out) if png else (None, "")
    if why:
        click.echo(f"note: {why}", err=True)
    if as_json:
        click.echo(json.dumps({**cmp.to_json(c), "svg": str(out),
                               "png": str(picture) if picture else None}, indent=1))
    else:
        click.echo(cmp.table(c) + f"\ntimeline: {out}" + (f" and {picture}" if picture else ""))
    sys.exit(0 if c.passed else 1)


if __name__ == "__main__":  # pragma: no cover
    main()
