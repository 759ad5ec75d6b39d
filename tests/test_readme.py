"""The README as a user follows it: every Python snippet runs as it stands, CI runs the
README's test command verbatim, and every measured figure matches its result file."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
NEEDS_GPU = "# needs a CUDA GPU"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", README, re.S | re.M)


PYTHON_SNIPPETS = _blocks("python")


def test_readme_has_the_snippets_this_test_runs():
    assert len(PYTHON_SNIPPETS) >= 2


@pytest.mark.parametrize("index", range(len(PYTHON_SNIPPETS)))
def test_readme_python_snippet_runs_as_written(index, tmp_path):
    code = PYTHON_SNIPPETS[index]
    if code.startswith(NEEDS_GPU) and not torch.cuda.is_available():
        compile(code, f"README snippet {index}", "exec")  # at least it parses
        pytest.skip("the snippet needs a CUDA GPU (benchmarks/gpu_session.sh runs it)")
    # from a scratch folder, as a user's script: the package must come from the install
    script = tmp_path / f"snippet_{index}.py"
    script.write_text(code)
    run = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, f"README snippet {index} failed:\n{code}\n{run.stderr}"


def test_ci_runs_the_readme_test_command_verbatim():
    section = README[README.index("## The two commands"):README.index("## Installing")]
    commands = [block.strip() for block in re.findall(r"^```bash\n(.*?)^```$", section,
                                                      re.S | re.M)]
    assert len(commands) == 2 and all("\n" not in c for c in commands), \
        "the two commands are one pasteable line each"
    search, test = commands
    assert search.endswith("-m fastdarts search") and test.endswith("-m pytest -q tests")
    for command in commands:
        assert command.startswith("python3 -m venv .venv && "), "each command makes its venv"
    ci = (ROOT / ".ci" / "run").read_text()
    assert test in ci.splitlines()


def test_readme_figures_match_their_result_files():
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "readme_figures.py"),
                          "--check"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "regions" in run.stdout


def test_readme_figure_regions_are_filled_and_name_existing_files():
    regions = re.findall(r"<!-- figure:([\w-]+)((?: [^ >]+)+) -->\n(.*?)<!-- /figure -->",
                         README, re.S)
    assert len(regions) >= 6
    for name, sources, body in regions:
        assert body.strip(), f"figure {name} is empty"
        for source in sources.split():
            assert (ROOT / source).is_file(), f"figure {name}: {source} is not committed"
            assert source in body, f"figure {name} does not name its source {source}"
