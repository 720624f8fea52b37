"""One source of truth: environment.yml lists the packages, the Makefile installs exactly those, nothing else lists them."""

from __future__ import annotations

import ast
import functools
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
TEST_REQUIREMENTS = REPO / "tests" / "requirements.txt"
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


def pinned_for_tests() -> list[Requirement]:
    """The test-only requirements that `make test` installs on top of environment.yml."""
    return requirements_file(TEST_REQUIREMENTS)


def python_files(folder: str) -> list[Path]:
    """The Python files of a repository folder and its subfolders (tools/ holds packages)."""
    return sorted((REPO / folder).rglob("*.py"))


def own_module_names() -> set[str]:
    """Top-level names the repository itself provides: its modules and packages in code/, tools/ and tests/."""
    paths = [path for folder in ("code", "tools", "tests") for path in python_files(folder)]
    return {path.stem for path in paths} | {path.parent.name for path in paths if path.name == "__init__.py"}


def is_optional(handlers: list[ast.ExceptHandler]) -> bool:
    """Whether a try statement's handlers catch a failed import (the import is optional, as in inference.py)."""
    caught = [handler.type for handler in handlers]
    names = [node.id for node in caught if isinstance(node, ast.Name)]
    names += [element.id for node in caught if isinstance(node, ast.Tuple)
              for element in node.elts if isinstance(element, ast.Name)]
    return bool({"ImportError", "ModuleNotFoundError"} & set(names))


def imported_modules(path: Path) -> list[str]:
    """The dotted names of the modules a file imports absolutely, except those inside `try: ... except ImportError`."""
    modules: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Try) and is_optional(node.handlers):
            children = [*node.handlers, *node.orelse, *node.finalbody]  # only the guarded body is optional
        else:
            children = list(ast.iter_child_nodes(node))
        if isinstance(node, ast.Import):
            modules.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.append(node.module)
        for child in children:
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    return modules


@functools.cache
def top_level_distributions() -> dict[str, list[str]]:
    """Which installed distributions provide each top-level module name (read once: it scans site-packages)."""
    return metadata.packages_distributions()


@functools.cache
def files_of(distribution: str) -> frozenset[str]:
    """The paths an installed distribution put into site-packages."""
    return frozenset(str(file) for file in metadata.files(distribution) or [])


def distributions_of(module: str) -> set[str]:
    """The installed distributions (canonical names) that provide a module; empty when none does."""
    candidates = top_level_distributions().get(module.split(".")[0], [])
    parts = module.split(".")
    # A namespace package (sagemaker) is split over several distributions: the one holding the module's folder
    # or file provides it.
    for depth in range(len(parts), 1, -1):
        folder = "/".join(parts[:depth])
        holders = [name for name in candidates
                   if any(file.startswith(folder + "/") or file == folder + ".py" for file in files_of(name))]
        if holders:
            return {canonicalize_name(name) for name in holders}
    return {canonicalize_name(name) for name in candidates}


def unpinned_imports(paths: list[Path], pins: list[Requirement], where: str) -> list[str]:
    """One line per third-party import of `paths` whose distribution `pins` lacks, naming module and distribution."""
    pinned = names(pins)
    skipped = set(sys.stdlib_module_names) | own_module_names()
    problems = []
    for path in paths:
        for module in imported_modules(path):
            if module.split(".")[0] in skipped:
                continue
            shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
            distributions = distributions_of(module)
            if not distributions:
                problems.append(f"{shown} imports {module}, which no installed distribution provides: "
                                f"install it and pin it in {where}")
            for distribution in sorted(distributions - pinned):
                problems.append(f"{shown} imports {module} from the distribution {distribution}, which {where} does "
                                f"not pin: add {distribution}=={metadata.version(distribution)} to {where}")
    return problems


def imported_distributions(paths: list[Path]) -> set[str]:
    """The distributions that the third-party imports of `paths` come from."""
    skipped = set(sys.stdlib_module_names) | own_module_names()
    return {distribution for path in paths for module in imported_modules(path)
            if module.split(".")[0] not in skipped for distribution in distributions_of(module)}


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


def test_every_distribution_code_imports_is_pinned_in_environment_yml() -> None:
    # code/ runs in the notebooks and the training container: `make tutorial` installs environment.yml only.
    assert unpinned_imports(python_files("code"), environment_pins(), "environment.yml") == []


def test_every_distribution_tools_and_tests_import_is_pinned() -> None:
    # tools/ and tests/ run after `make test`, which adds tests/requirements.txt (the mirror's mlxtend, pytest).
    paths = python_files("tools") + python_files("tests")
    where = "environment.yml or tests/requirements.txt"

    assert unpinned_imports(paths, environment_pins() + pinned_for_tests(), where) == []


def test_an_unpinned_import_is_named_with_its_distribution(tmp_path: Path) -> None:
    module = tmp_path / "sample.py"
    module.write_text(
        "import json\nimport numpy as np\nfrom PIL import Image\nimport mnist_data\nfrom . import sibling\n"
        "try:\n    import not_installed_anywhere\nexcept ImportError:\n    not_installed_anywhere = None\n"
        "def later():\n    from sagemaker.serve.builder.schema_builder import SchemaBuilder\n"
        "    import missing_module_xyz\n"
    )
    pins = [Requirement("numpy==1.0"), Requirement("sagemaker==3.27.0")]

    problems = unpinned_imports([module], pins, "environment.yml")

    assert problems == [
        f"{module} imports PIL from the distribution pillow, which environment.yml does not pin: "
        f"add pillow=={metadata.version('pillow')} to environment.yml",
        # The SDK's meta-package does not count: sagemaker.serve comes from its own distribution.
        f"{module} imports sagemaker.serve.builder.schema_builder from the distribution sagemaker-serve, which "
        f"environment.yml does not pin: add sagemaker-serve=={metadata.version('sagemaker-serve')} to environment.yml",
        f"{module} imports missing_module_xyz, which no installed distribution provides: install it and pin it in "
        "environment.yml",
    ]


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
    test_requirements = pinned_for_tests()
    imported = imported_distributions(python_files("code") + python_files("tools") + python_files("tests"))

    # Exactly what the tests and tools import beyond environment.yml: nothing missing, nothing stale.
    assert names(test_requirements) == imported - names(environment_pins())
    assert not names(test_requirements) & names(environment_pins())
    assert [installed_mismatch(requirement) for requirement in test_requirements] == [None] * len(test_requirements)


def test_training_job_requirements_leave_torch_to_the_container_and_agree_with_environment_yml() -> None:
    job_requirements = requirements_file(REPO / "code" / "requirements.txt")
    pins = {canonicalize_name(pin.name): pin.specifier for pin in environment_pins()}

    assert {"pytorch-lightning", "torchmetrics"} <= names(job_requirements)
    assert not names(job_requirements) & {"torch", "torchvision"}
    for requirement in job_requirements:
        assert pins.get(canonicalize_name(requirement.name)) == requirement.specifier, (
            f"code/requirements.txt: {requirement} is not pinned the same in environment.yml"
        )
