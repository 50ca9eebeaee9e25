"""The release a user installs: sdist and wheel build, pass twine's checks, and the wheel runs from a fresh venv."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python -m build`` of this checkout, as ``make dist`` runs it, into a folder of the test's own."""
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def built(dist: Path, pattern: str) -> Path:
    (found,) = dist.glob(pattern)
    return found


def test_twine_check_passes_strict_on_the_sdist_and_the_wheel(dist: Path) -> None:
    """twine check --strict: the metadata is complete and README.rst renders as the PyPI description, no warning."""
    files = [str(built(dist, "*.tar.gz")), str(built(dist, "*.whl"))]
    done = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *files], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("PASSED") == 2 and "WARNING" not in done.stdout


def test_the_wheel_holds_what_dsat_needs_at_run_time_under_dsat_alone(dist: Path) -> None:
    """Satellites, carbon_conf (with the dashboards) and the demo topology are in the wheel, all inside the dsat
    package: the folders satellites/ and carbon_conf/ of the repository install as dsat.satellites and
    dsat.carbon_conf, so the wheel adds no generic top-level name to site-packages."""
    names = set(zipfile.ZipFile(built(dist, "*.whl")).namelist())
    wanted = {
        "dsat/demo.toml",
        "dsat/tools/bench_load.py",
        "dsat/satellites/__init__.py",
        "dsat/satellites/synthetic.py",
        "dsat/carbon_conf/carbon.conf",
        "dsat/carbon_conf/storage-schemas.conf",
        "dsat/carbon_conf/storage-aggregation.conf",
        "dsat/carbon_conf/local_settings.py",
        "dsat/carbon_conf/dashboards/dsat.json",
    }
    assert wanted <= names, sorted(wanted - names)
    assert any(name.startswith("dsat/_speedups.") and name.endswith(".so") for name in names), "no compiled hot path"
    assert {name.split("/")[0] for name in names if not name.startswith("dsat-")} == {"dsat"}


def test_the_sdist_holds_the_c_source_it_builds_the_compiled_hot_path_from(dist: Path) -> None:
    with tarfile.open(built(dist, "*.tar.gz")) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    assert {"setup.py", "dsat/_speedups.c", "pyproject.toml"} <= names


def test_the_wheel_installed_in_a_fresh_venv_validates_the_packaged_demo(dist: Path, tmp_path: Path) -> None:
    """A fresh venv, the wheel installed (not editable) without extras: the runtime that runs a step imports
    (dsat.process: no import of pyOpenSSL, which comes with [tls] only), dsat --version, and dsat validate on
    its demo.toml."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    env = {**os.environ, "GRAPHITE_NO_PREFIX": "True", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)
    wheel = built(dist, "*.whl")
    done = subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", str(wheel)], capture_output=True, text=True, env=env, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    imported = subprocess.run(
        [
            str(py),
            "-c",
            "import dsat, dsat.satellites, dsat.process, importlib.resources as r; print(dsat.__file__);"
            " print(r.files('dsat') / 'demo.toml'); print(r.files('dsat.carbon_conf') / 'carbon.conf')",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert imported.returncode == 0, imported.stderr[-3000:]
    where = imported.stdout.split()
    assert where[0].startswith(str(env_dir)), f"dsat imported from {where[0]}, not the venv"
    assert Path(where[2]).is_file()
    dsat = str(env_dir / "bin" / "dsat")
    compiled_env = {k: v for k, v in env.items() if k != "DSAT_PURE_PYTHON"}
    version = subprocess.run(
        [dsat, "--version"], capture_output=True, text=True, cwd=tmp_path, env=compiled_env, timeout=600
    )
    assert version.stdout.strip() == f"dsat {wheel.name.split('-')[1]}, hot path: compiled (dsat._speedups)"
    # As dsat demo does, the packaged file is copied out first: its run_dir ("run", beside the file) would
    # put unix sockets deep in site-packages, past the OS's 107-byte limit, and validate says so.
    # --no-environment: the demo's ports may be in use on a test machine.
    with tempfile.TemporaryDirectory(prefix="dsat-") as short:
        topo = Path(short) / "demo.toml"
        shutil.copyfile(where[1], topo)
        valid = subprocess.run(
            [dsat, "validate", "--no-environment", str(topo)],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            timeout=600,
        )
    assert valid.returncode == 0, valid.stderr
    assert "OK (7 satellites" in valid.stdout


@pytest.fixture
def gnupg() -> Iterator[dict[str, str]]:
    """An empty GnuPG home of the test's own (short: gpg-agent's socket lives there), its agent stopped after."""
    home = tempfile.mkdtemp(prefix="dsat-gpg-")
    os.chmod(home, 0o700)
    env = {**os.environ, "GNUPGHOME": home}
    yield env
    subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=env, capture_output=True, timeout=600)
    shutil.rmtree(home, ignore_errors=True)


def unsigned(dist: Path, tmp_path: Path) -> Path:
    out = tmp_path / "dist"
    out.mkdir()
    for f in (built(dist, "*.tar.gz"), built(dist, "*.whl")):
        shutil.copy(f, out)
    return out


def test_make_release_without_a_key_says_how_to_get_one(dist: Path, tmp_path: Path, gnupg: dict[str, str]) -> None:
    """With no GPG secret key, the signing step of make release fails, says what to do, and signs nothing."""
    files = unsigned(dist, tmp_path)
    done = subprocess.run(
        ["make", "-s", "-C", str(ROOT), "sign", f"DIST={files}"], capture_output=True, text=True, env=gnupg, timeout=600
    )
    assert done.returncode != 0
    assert "no GPG secret key" in done.stderr and "gpg --full-generate-key" in done.stderr
    assert not list(files.glob("*.asc"))


def test_make_release_signs_each_file_with_the_configured_key(
    dist: Path, tmp_path: Path, gnupg: dict[str, str]
) -> None:
    """With a key, make release leaves a detached .asc signature beside the sdist and the wheel, and it verifies."""
    uid = "DSAT release test <release-test@example.invalid>"
    subprocess.run(
        ["gpg", "--batch", "--passphrase", "", "--quick-generate-key", uid, "default", "default", "never"],
        check=True,
        capture_output=True,
        env=gnupg,
        timeout=600,
    )
    files = unsigned(dist, tmp_path)
    done = subprocess.run(
        ["make", "-s", "-C", str(ROOT), "sign", f"DIST={files}", "GPG_KEY=release-test@example.invalid"],
        capture_output=True,
        text=True,
        env=gnupg,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    for f in (built(files, "*.tar.gz"), built(files, "*.whl")):
        signature = Path(f"{f}.asc")
        assert signature.read_text().startswith("-----BEGIN PGP SIGNATURE-----")
        check = subprocess.run(
            ["gpg", "--verify", str(signature), str(f)], capture_output=True, text=True, env=gnupg, timeout=600
        )
        assert check.returncode == 0 and uid in check.stderr
