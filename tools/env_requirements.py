"""Print the pip requirements of environment.yml, one per line, so pip installs exactly what conda would.

environment.yml is the single list of packages; this reads its `- pip:` block with the standard library
only (it runs before any package is installed).
"""

import sys
from pathlib import Path


def pip_requirements(environment_yml: Path) -> list[str]:
    """Return the entries of the `- pip:` list in a conda environment file."""
    requirements: list[str] = []
    pip_indent = None
    for line in environment_yml.read_text().splitlines():
        stripped = line.split("#", 1)[0].rstrip()
        if not stripped.strip():
            continue
        indent = len(stripped) - len(stripped.lstrip())
        if stripped.strip() == "- pip:":
            pip_indent = indent
        elif pip_indent is not None:
            if indent <= pip_indent:
                break
            requirements.append(stripped.strip().removeprefix("- ").strip())
    if not requirements:
        raise ValueError(f"{environment_yml}: no '- pip:' list found")
    return requirements


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "environment.yml")
    print("\n".join(pip_requirements(path)))
