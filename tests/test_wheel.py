"""Templates ship inside the built wheel and load from an installed copy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .conftest import REPO


def test_installed_wheel_renders_templates(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(wheels), str(REPO)], check=True)
    (wheel,) = wheels.glob("bootgen-*.whl")
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(target), str(wheel)], check=True)
    assert (target / "bootgen/data/units/system.conf.j2").is_file()
    assert (target / "bootgen/data/scripts-legacy/init.sh.j2").is_file()
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import bootgen.image.templates as t;"
        "root = str(t.data_root()); assert root.startswith(sys.argv[1]), root;"
        "print(t.render('units/system.conf.j2', {'device_timeout': 7}), end='')"
    )
    out = subprocess.run([sys.executable, "-I", "-c", code, str(target)], capture_output=True,
                         text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "DefaultDeviceTimeoutSec=7s" in out.stdout
