"""The repository as an open-source project: CI workflows, the README's commands, licences, citation.

The workflow files and ``CITATION.cff`` are validated offline by ``check-jsonschema`` against the
schemas it ships (GitHub workflows, Citation File Format 1.2.0).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
README = ROOT / "README.md"


def check_schema(schema: str, *paths: Path) -> subprocess.CompletedProcess:
    """Run check-jsonschema with one of its built-in schemas; files are read as YAML."""
    command = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema, "--force-filetype", "yaml"]
    return subprocess.run([*command, *map(str, paths)], capture_output=True, text=True)


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def triggers(workflow: dict) -> dict:
    # YAML 1.1, which PyYAML reads, takes the bare key `on` for the boolean True.
    return workflow[True]


def steps(workflow: dict) -> list[dict]:
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])]


def readme_commands() -> list[str]:
    """The commands of the fenced bash blocks under the README's "Set-up on a fresh machine"."""
    section = README.read_text(encoding="utf-8").split("## Set-up on a fresh machine\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^[ \t]*```bash\n(.*?)^[ \t]*```", section, re.M | re.S)
    return [block.strip() for block in blocks]


def repository_url() -> str:
    return load(ROOT / "_config.yml")["repository"]["url"].rstrip("/")


def pages_url(repository: str) -> str:
    """The GitHub Pages address of a repository: github.com/OWNER/REPO -> https://owner.github.io/REPO/."""
    match = re.fullmatch(r"https://github\.com/([^/]+)/([^/]+)", repository)
    assert match, f"repository.url in _config.yml is not a GitHub repository: {repository}"
    owner, repo = match.groups()
    return f"https://{owner.lower()}.github.io/{repo}/"


def test_pages_url():
    assert pages_url("https://github.com/Some-Owner/a-book") == "https://some-owner.github.io/a-book/"


def test_workflows_are_valid():
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert {path.name for path in files} >= {"tests.yml", "book.yml"}
    result = check_schema("vendor.github-workflows", *files)
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_check_rejects_a_broken_workflow(tmp_path):
    broken = tmp_path / "tests.yml"
    broken.write_text((WORKFLOWS / "tests.yml").read_text().replace("runs-on:", "runs_on:"))
    result = check_schema("vendor.github-workflows", broken)
    assert result.returncode != 0
    assert "runs_on" in result.stdout


def test_ci_runs_the_readme_test_command():
    commands = readme_commands()
    assert len(commands) == 2 and "\n" not in commands[1], commands
    test_command = commands[1]
    assert "ruff check" in test_command and "lint-imports" in test_command and "pytest" in test_command

    workflow = load(WORKFLOWS / "tests.yml")
    assert {"pull_request", "push"} <= set(triggers(workflow))
    assert test_command in [step.get("run", "").strip() for step in steps(workflow)]

    script = (ROOT / ".ci" / "run").read_text().splitlines()
    assert "set -euo pipefail" in script
    assert test_command in script
    assert test_command in (ROOT / "CONTRIBUTING.md").read_text().splitlines()


def test_book_workflow_builds_and_publishes():
    build_command = readme_commands()[0].split(" && ")[-1]
    assert build_command == "jupyter-book build . -W --keep-going"

    workflow = load(WORKFLOWS / "book.yml")
    assert triggers(workflow)["push"]["branches"] == ["main"]
    assert workflow["permissions"]["pages"] == "write" and workflow["permissions"]["id-token"] == "write"
    assert "group" in workflow["concurrency"]
    runs = [step.get("run", "") for step in steps(workflow)]
    assert any("pip install -r requirements.txt" in run for run in runs)
    assert any("pip install -e ." in run for run in runs)
    assert build_command in [run.strip() for run in runs]

    uses = {step.get("uses", "").split("@")[0]: step for step in steps(workflow)}
    assert uses["actions/upload-pages-artifact"]["with"]["path"] == "_build/html"
    assert "actions/deploy-pages" in uses


@pytest.mark.parametrize("name", ["tests.yml", "book.yml"])
def test_workflows_cache_pip(name):
    workflow = load(WORKFLOWS / name)
    for job in workflow["jobs"].values():
        setup = [step for step in job.get("steps", []) if step.get("uses", "").startswith("actions/setup-python")]
        assert len(setup) <= 1 and all(step["with"]["cache"] == "pip" for step in setup)
    assert any(step.get("uses", "").startswith("actions/setup-python") for step in steps(workflow))


def test_ci_runs_the_chapters_from_the_wheel_with_one_thread():
    """The `wheel` job: a fresh environment with pyproject.toml's dependencies only, the chapters run
    from outside the repository under nbval, at another thread count than the `tests` job."""
    job = load(WORKFLOWS / "tests.yml")["jobs"]["wheel"]
    runs = [step.get("run", "") for step in job["steps"]]
    assert ".ci/wheel_check" in [run.strip() for run in runs]
    assert not any("requirements.txt" in run or "-e ." in run for run in runs)
    script = (ROOT / ".ci" / "wheel_check").read_text()
    assert "set -euo pipefail" in script and "unset PYTHONPATH" in script
    assert "pip wheel --no-deps" in script and "python -m venv" in script and "[chapters,test]" in script
    assert '-c "$repo/requirements.txt"' in script  # the versions the committed outputs were made with
    assert "OMP_NUM_THREADS=1" in script and "--nbval --nbval-current-env" in script
    assert (ROOT / ".ci" / "wheel_check").stat().st_mode & 0o111, "chmod +x .ci/wheel_check"


def test_citation_is_valid_cff():
    result = check_schema("vendor.citation-file-format", ROOT / "CITATION.cff")
    assert result.returncode == 0, result.stdout + result.stderr

    citation = load(ROOT / "CITATION.cff")
    assert citation["cff-version"] == "1.2.0"
    assert citation["repository-code"] == repository_url()
    assert citation["url"] == pages_url(repository_url())
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'version = "{citation["version"]}"' in pyproject
    assert f'license = {{ text = "{citation["license"]}" }}' in pyproject
    paper = [ref for ref in citation["references"] if ref["title"].startswith("CoAtNet:")]
    assert [author["family-names"] for author in paper[0]["authors"]] == ["Dai", "Liu", "Le", "Tan"]


def test_schema_check_rejects_a_broken_citation(tmp_path):
    broken = tmp_path / "CITATION.cff"
    broken.write_text((ROOT / "CITATION.cff").read_text().replace("license: MIT", "license: MIT License"))
    result = check_schema("vendor.citation-file-format", broken)
    assert result.returncode != 0
    assert "MIT License" in result.stdout


@pytest.mark.parametrize("page", ["README.md", "book/preface.md"])
def test_pages_name_the_published_book_and_this_repository(page):
    text = (ROOT / page).read_text(encoding="utf-8")
    book_urls = set(re.findall(r"https://[\w.-]+\.github\.io/[\w.-]+/?", text))
    assert book_urls == {pages_url(repository_url())}
    repositories = set(re.findall(r"https://github\.com/[\w.-]+/[\w.-]+", text))
    assert repository_url() in repositories
    # other repositories may be cited (timm's release notes), but none under another name for this book
    assert not {r for r in repositories if r != repository_url() and "coatnet" in r.lower()}


def test_licences_agree():
    assert (ROOT / "LICENSE").read_text().startswith("MIT License\n")
    cc_by = "https://creativecommons.org/licenses/by/4.0/"
    assert cc_by in (ROOT / "LICENSE-text.md").read_text()
    assert cc_by in load(ROOT / "_config.yml")["html"]["extra_footer"]


def test_notebooks_are_formatted_at_88_columns_and_the_code_at_120():
    def line_length(path: str) -> str:
        settings = subprocess.run(
            ["ruff", "check", "--show-settings", path], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
        return re.search(r"^formatter\.line_width = (\d+)$", settings, re.M).group(1)

    assert line_length("notebooks/01_depthwise_convolution.ipynb") == "88"
    assert line_length("coatlib/layers.py") == "120"


def test_every_committed_result_the_chapters_read_ships_with_the_package():
    """Colab readers install coatlib without the repository: every file under coatlib/artefacts must match
    a package-data pattern of pyproject.toml, or the installed package lacks it."""
    import fnmatch

    import tomllib

    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["coatlib"]
    artefacts = ROOT / "coatlib" / "artefacts"
    data = [p for p in artefacts.rglob("*") if p.is_file() and p.suffix not in {".py", ".pyc"}]  # not the accessor
    files = [p.relative_to(ROOT / "coatlib").as_posix() for p in data]
    assert {"artefacts/layout_study_cpu.json", "artefacts/chapter3_bias.json"} <= set(files)
    missing = [f for f in files if not any(fnmatch.fnmatchcase(f, p) for p in patterns)]
    assert not missing, f"not in [tool.setuptools.package-data]: {missing}"
