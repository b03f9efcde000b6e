"""The tree keeps the architecture docs/architecture.md describes: rooms that import only
downwards, no import cycles, features that never import each other, and the feature API's
promises (named hook order, accounts from contributions, hooks never dropped)."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from bootgen.description import loads
from bootgen.errors import BuildError, DescriptionError
from bootgen.features import FEATURES, NAMES
from bootgen.features.api import Context, Contribution, Feature, Group, Hook, User
from bootgen.image.plan import order_hooks, plan
from bootgen.image.render import render

from .conftest import EXAMPLES, PUBLIC_KEY

PACKAGE = Path(__file__).resolve().parent.parent / "bootgen"

# Rooms from the bottom up; a module may import its own room and the rooms below it.
ROOMS = (
    ("errors", "progress"),
    ("run", "paths", "archive"),
    ("config",),
    ("features",),
    ("description", "image"),
    ("vm", "detect"),
    ("report",),
    ("cli", "__init__"),
)
LEVEL = {name: i for i, names in enumerate(ROOMS) for name in names}
MAX_LINES = 600


def modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts): p
            for p in PACKAGE.rglob("*.py")}


def imports(module: str, path: Path) -> set[str]:
    """The bootgen modules `module` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()
    known = modules()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                full = f"{target}.{alias.name}"
                found.add(full if full in known else target)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m.removesuffix(".__init__") for m in found if m.startswith("bootgen")}


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_rooms_import_only_downwards() -> None:
    wrong = []
    for mod, path in modules().items():
        mine = LEVEL[room(mod)]
        for dep in imports(mod, path):
            if dep != "bootgen" and LEVEL[room(dep)] > mine:
                wrong.append(f"{mod} imports {dep}")
    assert wrong == []


def test_no_import_cycles() -> None:
    graph = {m.removesuffix(".__init__"): imports(m, p) for m, p in modules().items()}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if dep == node or dep not in graph:
                continue
            if state.get(dep) == 1:
                pytest.fail("import cycle: " + " -> ".join([*stack, node, dep]))
            if dep not in state:
                visit(dep, [*stack, node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_features_import_only_the_api_and_shared_helpers() -> None:
    allowed = {"bootgen", "bootgen.features.api", "bootgen.features.common"}
    for mod, path in modules().items():
        if not mod.startswith("bootgen.features.") or mod.split(".")[-1] in (
                "api", "common", "__init__"):
            continue
        assert imports(mod, path) <= allowed, mod


def test_modules_stay_small() -> None:
    big = {m: n for m, p in modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert big == {}


def test_registry_names_are_unique_and_hooks_name_features() -> None:
    assert len(set(NAMES)) == len(NAMES)
    host = loads((EXAMPLES / "network.toml").read_text())
    for flavor in ("systemd", "scripted"):
        ctx = Context(flavor, "k", frozenset(NAMES))
        for f in FEATURES:
            if f.applies(host, ctx):
                for h in f.contribute(host, ctx).hooks:
                    assert set(h.after) <= set(NAMES), (f.name, h)


def hook(feature: str, point: str = "post-udev", after: tuple[str, ...] = ()) -> Hook:
    return Hook(point, f"scripts-legacy/{feature}.sh.j2", after=after, feature=feature)


def test_hooks_in_registry_order_unless_named() -> None:
    names = ["a", "b", "c"]
    assert [h.feature for h in order_hooks([hook("c"), hook("a"), hook("b")], names)] == \
        ["a", "b", "c"]
    got = order_hooks([hook("a", after=("c",)), hook("b"), hook("c")], names)
    assert [h.feature for h in got] == ["b", "c", "a"]
    # points keep the init's order, whatever the registry says
    got = order_hooks([hook("a", "cleanup"), hook("b", "pre-udev")], names)
    assert [h.point for h in got] == ["pre-udev", "cleanup"]
    # `after` a feature that does not apply is no constraint; one that does not exist is a bug
    assert len(order_hooks([hook("a", after=("b",))], names)) == 1
    with pytest.raises(BuildError, match="'nope', which is not a feature"):
        order_hooks([hook("a", after=("nope",))], names)
    with pytest.raises(BuildError, match="wait for each other"):
        order_hooks([hook("a", after=("b",)), hook("b", after=("a",))], names)


def test_network_flush_after_ssh_stop_and_sshd_after_network() -> None:
    text = (EXAMPLES / "network.toml").read_text() + (
        f'\n[network.ssh]\nenable = true\nauthorized_keys = ["{PUBLIC_KEY}"]\n'
        'host_keys = ["/etc/ssh/k"]\n')
    spec = plan(loads(text), flavor="scripted", kver="k")
    order = [(h.point, h.feature) for h in spec.hooks]
    assert order == [("post-udev", "network"), ("post-udev", "ssh"), ("cleanup", "ssh"),
                     ("cleanup", "network")]


def extra_feature(**contribution: object) -> Feature:
    return Feature("extra", "test", applies=lambda h, c: True,
                   contribute=lambda h, c: Contribution(**contribution))  # type: ignore[arg-type]


def test_every_hook_point_is_placed_and_unplaced_hooks_fail() -> None:
    host = loads((EXAMPLES / "minimal.toml").read_text())
    features = tuple(f for f in FEATURES if f.name != "extra")
    for point in ("pre-udev", "post-udev", "pre-mount", "post-mount", "pre-pivot", "cleanup"):
        probe = extra_feature(hooks=(Hook(point, "scripts-legacy/network-flush.sh.j2",
                                          view={"flush": True}),))
        spec = plan(host, flavor="scripted", kver="k", features=(*features, probe))
        init = next(g for g in render(spec) if g.path == "/init").content or b""
        assert b"# --- extra: scripts-legacy/network-flush.sh.j2" in init, point
    # the systemd flavour has no hook points: a feature that adds one there is an error
    spec = plan(host, flavor="systemd", kver="k", features=(*features, probe))
    with pytest.raises(BuildError, match="placed by no template of the systemd flavour"):
        render(spec)


def test_accounts_come_from_contributions() -> None:
    host = loads((EXAMPLES / "network.toml").read_text())
    spec = plan(host, flavor="scripted", kver="k")
    passwd = next(g for g in spec.generated if g.path == "/etc/passwd").content or b""
    assert passwd.splitlines()[0] == b"root:x:0:0:root:/root:/bin/sh"
    assert b"systemd-network:x:998:998:" in passwd
    shadow = next(g for g in spec.generated if g.path == "/etc/shadow")
    assert shadow.mode == 0o600 and shadow.content == b"root::19000:0:99999:7:::\n"
    features = tuple(f for f in FEATURES if f.name != "extra")
    clash = extra_feature(users=(User("systemd-network", 1000, 1000),))
    with pytest.raises(BuildError, match="systemd-network: network wants uid/gid 998/998"):
        plan(host, flavor="scripted", kver="k", features=(*features, clash))
    same = extra_feature(groups=(Group("systemd-network", 998),))
    spec = plan(host, flavor="scripted", kver="k", features=(*features, same))
    assert [g.name for g in spec.groups].count("systemd-network") == 1


def test_sections_belong_to_features_and_unknown_keys_name_them() -> None:
    host = loads((EXAMPLES / "luks.toml").read_text())
    assert host.luks[0].name == "cryptroot"  # attribute access to a feature's section
    assert dataclasses.is_dataclass(host.sections["network.ssh"])
    with pytest.raises(DescriptionError) as e:
        loads("[lukz]\n" + (EXAMPLES / "minimal.toml").read_text())
    assert "did you mean 'luks'?" in e.value.format()


def test_compression_level_checked_at_load() -> None:
    text = (EXAMPLES / "minimal.toml").read_text().replace(
        'flavor = "systemd"', 'flavor = "systemd"\ncompression_level = 99')
    with pytest.raises(DescriptionError) as e:
        loads(text)
    assert e.value.format() == ("error: <string>: boot.compression_level: 99 is not a zstd level"
                                " (hint: use 1-22)")
