"""Backend selection: specifications, TSMR_BACKEND, and the detection fallback."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

import tsmr
from tsmr import InputError
from tsmr.backends.detect import EmulatedBackendWarning, open_backend
from tsmr.backends.emulated import EmulatedRegisterSet
from tsmr.backends.sysfs import SysfsRegisterSet
from tsmr.errors import BackendError


def test_emulated_specs(state_dir: Path) -> None:
    with open_backend("emulated:sample") as rs:
        assert isinstance(rs, EmulatedRegisterSet) and rs.provider == "emulated-sample"
    with open_backend("emulator:cca") as rs:
        assert rs.profile_name == "cca"  # type: ignore[attr-defined]
    with open_backend("emulated") as rs:
        assert rs.profile_name == "tdx"  # type: ignore[attr-defined]


def test_sysfs_specs(tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    with open_backend(f"sysfs:{d}") as rs:
        assert isinstance(rs, SysfsRegisterSet) and rs.directory == d
    with pytest.raises(BackendError, match="/sys/class/misc/nosuchdev/measurements is not a directory"):
        open_backend("sysfs:nosuchdev")


def test_environment_selects(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TSMR_BACKEND", "emulated:tpm")
    with tsmr.open() as rs:
        assert rs.provider == "emulated-tpm"
    with tsmr.open("emulated:tdx") as rs:  # an explicit spec wins over the environment
        assert rs.provider == "emulated-tdx"


@pytest.mark.parametrize("spec", ["nosuch", "tpmx:1", "sysf"])
def test_unknown_spec(spec: str) -> None:
    with pytest.raises(InputError, match="unknown backend"):
        open_backend(spec)


def test_tpm_spec_reports_a_missing_server() -> None:
    # A TCTI with nothing listening: a clear BackendError, not a hang.
    with pytest.raises(BackendError, match="tpm"):
        open_backend("tpm:swtpm:host=127.0.0.1,port=1")


def test_fallback_to_emulator_warns(state_dir: Path) -> None:
    if os.path.exists("/dev/tpmrm0") or list(Path("/sys/class/misc").glob("*/measurements")):
        pytest.skip("this machine has a TPM or a tsm-mr device: detection does not fall back")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with tsmr.open() as rs:
            assert rs.kind == "emulated" and not rs.hardware_backed
    assert any(issubclass(w.category, EmulatedBackendWarning) for w in caught)
