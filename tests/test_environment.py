"""One source of truth: environment.yml lists the packages, the Makefile installs exactly those, nothing else lists them."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from env_requirements import pip_requirements

REPO = Path(__file__).resolve().parents[1]
ENVIRONMENT = REPO / "environment.yml"
TEST_ONLY_PACKAGES = {"pytest", "mlxtend"}
# Requirement lists allowed besides environment.yml: the tests' extras, and the SageMaker job's own list.
ALLOWED_REQUIREMENT_LISTS = {"tests/requirements.txt", "code/requirements.txt"}
SAMPLE_ENVIRONMENT = """\
name: sample  # a trailing comment
channels:
  - conda-forge
dependencies:
  - python=3.11
  - pip  # the pip package itself
  - pip:
      # Deep learning
      - torch==2.14.1   # why this pin

      - moto[server]==5.2.5
  - nodejs=20
variables:
  - not-a-requirement
"""


def environment_pins() -> list[Requirement]:
    """The pip requirements of environment.yml, parsed."""
    return [Requirement(line) for line in pip_requirements(ENVIRONMENT)]


def requirements_file(path: Path) -> list[Requirement]:
    """The requirements of a pip requirements file (comments, blank lines and options skipped)."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [Requirement(line) for line in lines if line and not line.startswith("-")]


def names(requirements: list[Requirement]) -> set[str]:
    """Canonical package names."""
    return {canonicalize_name(requirement.name) for requirement in requirements}


def installed_mismatch(requirement: Requirement) -> str | None:
    """Why the installed package does not satisfy the requirement, or None when it does."""
    try:
        version = metadata.version(requirement.name)
    except metadata.PackageNotFoundError:
        return f"{requirement.name} is not installed"
    if not requirement.specifier.contains(Version(version), prereleases=True):
        return f"{requirement.name} {version} is installed, {requirement} is required"
    return None


def extra_dependencies(requirement: Requirement) -> list[Requirement]:
    """What the requirement's extras (as in moto[server]) add to the package's own dependencies."""
    added = []
    for line in metadata.requires(requirement.name) or []:
        dependency = Requirement(line)
        if dependency.marker is None or dependency.marker.evaluate({"extra": ""}):
            continue
        if any(dependency.marker.evaluate({"extra": extra}) for extra in requirement.extras):
            added.append(dependency)
    return added


def repository_files() -> list[str]:
    """Files of the repository, tracked or new, without what .gitignore excludes (.venv, build, data)."""
    listing = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, text=True, check=True,
    )
    return [name for name in listing.stdout.splitlines() if (REPO / name).is_file()]


# --- environment.yml and its parser ----------------------------------------------------------------------------


def test_parser_reads_the_pip_block_as_yaml_does() -> None:
    dependencies = yaml.safe_load(ENVIRONMENT.read_text())["dependencies"]
    (pip_block,) = [entry["pip"] for entry in dependencies if isinstance(entry, dict)]

    assert pip_requirements(ENVIRONMENT) == pip_block


def test_parser_skips_comments_keeps_extras_and_stops_at_the_end_of_the_pip_block(tmp_path: Path) -> None:
    path = tmp_path / "environment.yml"
    path.write_text(SAMPLE_ENVIRONMENT)

    assert pip_requirements(path) == ["torch==2.14.1", "moto[server]==5.2.5"]


def test_parser_without_a_pip_block_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "environment.yml"
    path.write_text("name: sample\ndependencies:\n  - python=3.11\n  - pip\n")

    with pytest.raises(ValueError, match="no '- pip:' list") as error:
        pip_requirements(path)
    assert str(path) in str(error.value)


def test_command_line_prints_one_requirement_per_line() -> None:
    printed = subprocess.run(
        [sys.executable, str(REPO / "tools" / "env_requirements.py"), str(ENVIRONMENT)],
        capture_output=True, text=True, check=True,
    )

    assert printed.stdout.splitlines() == pip_requirements(ENVIRONMENT)


def test_environment_declares_python_3_11_and_the_tests_run_on_it() -> None:
    dependencies = yaml.safe_load(ENVIRONMENT.read_text())["dependencies"]

    assert "python=3.11" in dependencies
    assert sys.version_info[:2] == (3, 11)


def test_every_pip_requirement_is_pinned_to_one_version() -> None:
    unpinned = [str(pin) for pin in environment_pins() if [spec.operator for spec in pin.specifier] != ["=="]]

    assert not unpinned


@pytest.mark.parametrize("requirement", environment_pins(), ids=str)
def test_requirement_is_installed_at_its_pinned_version(requirement: Requirement) -> None:
    assert installed_mismatch(requirement) is None
    assert [installed_mismatch(dependency) for dependency in extra_dependencies(requirement)] == [None] * len(
        extra_dependencies(requirement)
    )


def test_extras_bring_their_dependencies_into_the_check() -> None:
    (moto,) = [pin for pin in environment_pins() if pin.name == "moto"]

    assert moto.extras == {"server"}
    assert "flask" in names(extra_dependencies(moto))


# --- nothing else lists the tutorial's packages ----------------------------------------------------------------


def test_makefile_installs_what_env_requirements_prints_from_environment_yml() -> None:
    makefile = (REPO / "Makefile").read_text()

    assert "tools/env_requirements.py environment.yml > $(VENV)/requirements.txt" in makefile
    install_lines = [line for line in makefile.splitlines() if " install " in line]
    assert any("--requirement $(VENV)/requirements.txt" in line for line in install_lines)
    assert all("--requirement" in line for line in install_lines), install_lines


def test_no_other_file_lists_requirements() -> None:
    def lists_requirements(name: str) -> bool:
        file = Path(name)
        if "requirements" in file.name and file.suffix in (".txt", ".in"):
            return True
        if file.name in ("Pipfile", "setup.py", "setup.cfg"):
            return True
        return file.suffix in (".yml", ".yaml") and "dependencies:" in (REPO / file).read_text()

    lists = {name for name in repository_files() if lists_requirements(name)}

    assert lists - {"environment.yml"} <= ALLOWED_REQUIREMENT_LISTS


def test_test_requirements_hold_only_test_packages_installed_at_their_pins() -> None:
    test_requirements = requirements_file(REPO / "tests" / "requirements.txt")

    assert names(test_requirements) == TEST_ONLY_PACKAGES
    assert not names(test_requirements) & names(environment_pins())
    assert [installed_mismatch(requirement) for requirement in test_requirements] == [None] * len(test_requirements)


def test_training_job_requirements_leave_torch_to_the_container_and_agree_with_environment_yml() -> None:
    path = REPO / "code" / "requirements.txt"
    if not path.exists():
        pytest.skip("code/requirements.txt does not exist yet")
    job_requirements = requirements_file(path)
    pins = {canonicalize_name(pin.name): pin.specifier for pin in environment_pins()}

    assert not names(job_requirements) & {"torch", "torchvision"}
    for requirement in job_requirements:
        name = canonicalize_name(requirement.name)
        if name in pins:
            assert requirement.specifier == pins[name], f"{requirement} differs from environment.yml"
