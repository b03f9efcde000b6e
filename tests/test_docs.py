"""docs/config.md is generated from the schema; it must not drift."""

from pathlib import Path

from bootgen.description import reference as generate


def test_config_reference_is_current() -> None:
    committed = (Path(__file__).parent.parent / "docs" / "config.md").read_text()
    assert committed == generate(), "docs/config.md is stale: run `make docs`"


def test_every_setting_documented() -> None:
    text = generate()
    for key in ("flavor", "compression", "device_timeout", "available_modules", "needed_for_boot",
                "key_file_device", "fallback_to_password", "authorized_keys",
                "root_password_hash", "allow_passwordless", "binaries"):
        assert f"| `{key}` |" in text
