"""What `pip install altclip` puts into site-packages: the wheel built from this checkout adds exactly `altclip` and
`modeling_altclip`, lives beside an unrelated package called `common`, and every console script answers ``--help``
from a folder that is not the repository.

Offline and without build isolation: the wheel is built by the setuptools of the interpreter running the tests
(>= 70.1, which builds wheels itself), and installed with ``--no-deps`` into a fresh venv. That venv sees the
dependencies (torch, transformers, ...) of the interpreter running the tests — the system Python, a virtual
environment or conda alike — through a ``.pth`` file listing that interpreter's site-packages folders after its own.
A folder named in a ``.pth`` file is only appended to ``sys.path``; the ``.pth`` files inside it (an editable install's
import hook) are not run, so every import is checked to come from the venv's own site-packages, and a copy of the
repository elsewhere on the machine cannot pass for the wheel.
"""

import configparser
import os
import shutil
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # builds two wheels and starts every console script (~1 min of CPU)
REPO_ROOT = Path(__file__).resolve().parents[1]
NOT_PACKAGED = (".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__", ".*cache", "tests", "docs")
UNRELATED_COMMON = (
    '"""Someone else\'s top-level package that happens to be called common."""\n\nOWNER = "someone else"\n'
)


def run(command: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(command)}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


def build_wheel(source: Path, dist: Path) -> Path:
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(source), "-w", str(dist)],
        source,
    )
    (wheel,) = dist.glob("*.whl")
    return wheel


def wheel_metadata(wheel: Path, name: str) -> str:
    with zipfile.ZipFile(wheel) as archive:
        (member,) = [member for member in archive.namelist() if member.endswith(f".dist-info/{name}")]
        return archive.read(member).decode()


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> dict[str, Path]:
    """The altclip wheel (built from a copy of the checkout, so no build/ or egg-info lands in it) and a tiny
    unrelated `common` wheel."""
    root = tmp_path_factory.mktemp("packaging")
    source = root / "altclip-source"
    shutil.copytree(REPO_ROOT, source, ignore=shutil.ignore_patterns(*NOT_PACKAGED))
    unrelated = root / "unrelated-common"
    (unrelated / "common").mkdir(parents=True)
    (unrelated / "common" / "__init__.py").write_text(UNRELATED_COMMON)
    (unrelated / "setup.py").write_text(
        "from setuptools import setup\nsetup(name='unrelated-common', version='1.0', packages=['common'])\n"
    )
    return {
        "altclip": build_wheel(source, root / "dist-altclip"),
        "common": build_wheel(unrelated, root / "dist-common"),
    }


def running_site_packages() -> list[str]:
    """The site-packages folders the interpreter running the tests imports from (a venv's, the base interpreter's
    where the venv sees them, the user's, conda's): where this run's torch and transformers are."""
    folders = [*site.getsitepackages(), *([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])]
    folders += [entry for entry in sys.path if Path(entry).name in ("site-packages", "dist-packages")]
    return [folder for folder in dict.fromkeys(folders) if Path(folder).is_dir()]


@pytest.fixture(scope="module")
def installed(wheels, tmp_path_factory) -> Path:
    """A fresh venv with both wheels installed, seeing the running interpreter's dependencies after its own
    site-packages (nothing downloaded)."""
    environment = tmp_path_factory.mktemp("venv") / "env"
    venv.EnvBuilder(system_site_packages=False, with_pip=False).create(environment)
    python = environment / "bin" / "python"
    own_site_packages = next((environment / "lib").glob("python3*/site-packages"))
    (own_site_packages / "running_interpreter_packages.pth").write_text("\n".join(running_site_packages()) + "\n")
    run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index"]
        + [str(wheel) for wheel in wheels.values()],
        environment,
    )
    return environment


def test_the_wheel_installs_exactly_altclip_and_modeling_altclip(wheels):
    wheel = wheels["altclip"]
    assert wheel_metadata(wheel, "top_level.txt").split() == ["altclip", "modeling_altclip"]
    record_paths = [line.rsplit(",", 2)[0] for line in wheel_metadata(wheel, "RECORD").splitlines() if line]
    top_level = {path.split("/")[0] for path in record_paths if ".dist-info/" not in path}
    assert top_level == {"altclip", "modeling_altclip"}
    # the jobs are subpackages of altclip, with the data files they read at run time
    for expected in (
        "altclip/training/cli.py",
        "altclip/common/cli_errors.py",
        "altclip/hub/model_card_template.md",
        "altclip/training/configs/contrastive_toy_cpu.yaml",
        "altclip/training/launch/slurm.sbatch",
        "altclip/evaluation/metrics/zeroshot_accuracy/README.md",
        "modeling_altclip/modeling_altclip.py",
    ):
        assert expected in record_paths, expected


def test_altclip_and_an_unrelated_common_import_as_themselves(installed, tmp_path):
    site_packages = next((installed / "lib").glob("python3*/site-packages"))
    check = (
        "import common, altclip, altclip.common.cli_errors, altclip.training.cli, altclip.evaluation.cli, "
        "altclip.hub.cli, altclip.demo.app, altclip.reproduction.run, modeling_altclip\n"
        "print(common.OWNER)\n"
        "for module in (common, altclip, altclip.common.cli_errors, altclip.training.cli, altclip.evaluation.cli, "
        "altclip.hub.cli, altclip.demo.app, altclip.reproduction.run, modeling_altclip): print(module.__file__)\n"
        "print(altclip.AltCLIPModel.__module__)\n"
    )
    lines = run([str(installed / "bin" / "python"), "-c", check], cwd=tmp_path).stdout.splitlines()
    assert lines[0] == "someone else"
    files = [Path(line) for line in lines[1:-1]]
    assert all(path.is_relative_to(site_packages) for path in files), files  # from the wheel, not a checkout
    assert files[0] == site_packages / "common" / "__init__.py"
    assert files[2] == site_packages / "altclip" / "common" / "cli_errors.py"
    assert lines[-1] == "modeling_altclip.modeling_altclip"


def test_every_console_script_answers_help_outside_the_repository(wheels, installed, tmp_path):
    entry_points = configparser.ConfigParser()
    entry_points.read_string(wheel_metadata(wheels["altclip"], "entry_points.txt"))
    scripts = sorted(entry_points["console_scripts"])
    assert len(scripts) >= 7
    commands = {name: [str(installed / "bin" / name), "--help"] for name in scripts}
    commands["python -m altclip.training.cli"] = [
        str(installed / "bin" / "python"),
        "-m",
        "altclip.training.cli",
        "--help",
    ]
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    running = {
        name: subprocess.Popen(
            command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for name, command in commands.items()
    }
    for name, process in running.items():
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, f"{name} --help:\n{err[-3000:]}"
        assert "usage:" in out + err and "Traceback" not in err, name
    assert not any(tmp_path.iterdir())  # --help wrote nothing into the folder it ran in
