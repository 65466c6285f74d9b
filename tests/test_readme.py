"""Every command block of README.md and docs/*.md works as copied: run in order, in a fresh copy of the repository;
and the documents stay short, free of lab history, and say each thing once.

The convention, for everyone who writes a README section:
- Every ```bash block is run, README.md first and then docs/*.md by name, in ONE bash session (`set -eo pipefail`), as a
  user pastes them into one terminal: an `export` in an earlier block holds for the later ones. The
  session starts in a fresh temporary copy of the repository (git's tracked files and untracked files
  that are not ignored, and the extension `pip install -e .` built; no runs/), with `../shared` beside
  it, and without TFDS_DATA_DIR or FLUXDIGITS_IDX_DIR set: blocks must work from a fresh clone. (The
  machine's decoded-array cache in ~/.cache/fluxdigits is used, as a user's would be.)
- FLUXDIGITS_SMOKE=1 is set: `python -m fluxdigits.run` (and every command that calls
  `fluxdigits.config.smoke_budget` on its configs, as a tuner's or another tool's command line should)
  trains 1 epoch on at most 2,000 examples, so the whole README runs in about a minute.
- `pip` is a shell function that only says what it would install: this machine has no package index,
  and the packages are installed already.
- A block whose fence is preceded by the line `<!-- readme-test: skip REASON -->` (blank lines between
  are allowed) is not run: a block that needs an extra (`.[bench]`), runs for minutes without a
  smoke budget, runs the test suite itself, or is what a dedicated test runs. Say the reason; a test named in it
  (`tests/FILE.py::test_NAME`) must exist. `<!-- readme-test: first N lines REASON -->` runs the block's first N.
- Other fences (```python, ```text, ...) are never run.
"""

import os
import pathlib
import re
import shutil
import subprocess

import pytest
from conftest import REPO, SHARED

MARKER = re.compile(r"<!--\s*readme-test:\s*(?:(skip)\b|first (\d+) lines?\b).*?-->")
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
NAMED_TEST = re.compile(r"\b(tests/\w+\.py)::(\w+)")


def bash_blocks(markdown: str) -> list[str]:
  """The ```bash blocks to run, in order: without those marked `<!-- readme-test: skip ... -->`, and only the first N
  lines of those marked `<!-- readme-test: first N lines ... -->`."""
  blocks = []
  for fence in FENCE.finditer(markdown):
    marker = MARKER.fullmatch(markdown[: fence.start()].rstrip().rsplit("\n", 1)[-1].strip())
    if fence.group(1) != "bash" or (marker and marker.group(1)):
      continue
    lines = fence.group(2).splitlines(keepends=True)
    blocks.append("".join(lines[: int(marker.group(2))] if marker else lines))
  return blocks


def copy_of_the_repository(destination: pathlib.Path) -> pathlib.Path:
  listed = subprocess.run(
    ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, text=True
  )
  if listed.returncode != 0:  # not a git checkout: copy the folder without runs
    shutil.copytree(REPO, destination, ignore=shutil.ignore_patterns("runs", ".git", "__pycache__"))
    return destination
  for name in filter(None, listed.stdout.split("\0")):
    if (REPO / name).is_file():
      (destination / name).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(REPO / name, destination / name)
  for built in REPO.glob("fluxdigits/**/*.so"):  # the extension `pip install -e .` built, as a user's checkout has it
    shutil.copy2(built, destination / built.relative_to(REPO))
  return destination


def test_bash_blocks_and_skip_markers_are_found():
  markdown = (
    "a\n```bash\necho one\n```\n<!-- readme-test: skip needs .[bench] -->\n\n```bash\necho two\n```\n"
    "```python\nprint(3)\n```\n```bash\necho four\n```\n"
  )
  assert bash_blocks(markdown) == ["echo one\n", "echo four\n"]
  assert bash_blocks("<!-- readme-test: first 1 line (why) -->\n```bash\necho 1\necho 2\n```\n") == ["echo 1\n"]


def test_a_block_left_to_a_dedicated_test_names_one_that_exists():
  named = [
    (document.name, *found.groups())
    for document in DOCUMENTS
    for marker in MARKER.finditer(document.read_text())
    for found in NAMED_TEST.finditer(marker.group(0))
  ]
  assert named, "no marker names the test that runs its block"
  missing = [n for n in named if not re.search(rf"^def {n[2]}\(", (REPO / n[1]).read_text(), re.MULTILINE)]
  assert not missing, f"markers name tests that do not exist: {missing}"


DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_readme_and_docs_commands_work_as_copied(tmp_path):
  if not SHARED.is_dir():
    pytest.skip(f"the README's commands read ../shared, which is not at {SHARED}")
  blocks = [block for document in DOCUMENTS for block in bash_blocks(document.read_text())]
  assert bash_blocks((REPO / "README.md").read_text()), "README.md has no ```bash block"
  repo = copy_of_the_repository(tmp_path / "fluxdigits")
  (tmp_path / "shared").symlink_to(SHARED)
  script = ["set -eo pipefail", 'pip() { echo "readme test: would run: pip $*"; }']
  for number, block in enumerate(blocks, 1):
    script += [f'echo "=== README block {number} of {len(blocks)}"', block]
  env = {k: v for k, v in os.environ.items() if k not in ("TFDS_DATA_DIR", "FLUXDIGITS_IDX_DIR", "PYTHONPATH")}
  env.update(FLUXDIGITS_SMOKE="1", PYTHONPATH=str(repo))
  result = subprocess.run(
    ["bash", "-c", "\n".join(script)], cwd=repo, env=env, capture_output=True, text=True, timeout=900
  )
  failed = re.findall(r"=== README block (\d+)", result.stdout)  # numbered across README.md, then docs/*.md
  assert result.returncode == 0, (
    f"README block {failed[-1] if failed else '?'} failed (exit {result.returncode}):\n"
    f"{blocks[int(failed[-1]) - 1] if failed else ''}\n--- stdout ---\n{result.stdout[-3000:]}\n"
    f"--- stderr ---\n{result.stderr[-3000:]}"
  )


def test_readme_is_short():
  lines = len((REPO / "README.md").read_text().splitlines())
  assert lines <= 350, f"README.md has {lines} lines; move what is not for a user's first read to docs/"


def test_no_lab_history_in_the_readme_or_docs():
  words = re.compile(r"\b(issues?|sessions?|lent)\b", re.IGNORECASE)
  found = [
    f"{d.relative_to(REPO)}: {line.strip()}"
    for d in DOCUMENTS
    for line in FENCE.sub("", d.read_text()).splitlines()
    if words.search(line)
  ]
  assert not found, "user documents speak of issues, sessions or who lent what:\n" + "\n".join(found)


def _paragraphs_and_rows(markdown: str) -> set[str]:
  """Prose paragraphs of more than a line and data rows of tables, whitespace-normalised; code blocks and table
  headers (which tables of one kind share) left out."""
  markdown = re.sub(r"^<!--.*?-->$", "", FENCE.sub("", markdown), flags=re.MULTILINE)
  found = set()
  for block in re.split(r"\n\s*\n", markdown):
    lines = [line.strip() for line in block.strip().splitlines()]
    if lines and lines[0].startswith("|"):
      found.update(line for line in lines[2:] if line.startswith("|"))
    elif len(" ".join(lines)) > 120 and not lines[0].startswith("<"):
      found.add(" ".join(" ".join(lines).split()))
  return found


def test_no_paragraph_or_table_row_in_two_documents():
  documents = [*DOCUMENTS, REPO / "benchmarks" / "NOTES.md"]
  seen, repeated = {}, []
  for document in documents:
    for text in _paragraphs_and_rows(document.read_text()):
      if text in seen:
        repeated.append(f"{seen[text]} and {document.relative_to(REPO)}: {text[:100]}")
      seen.setdefault(text, document.relative_to(REPO))
  assert not repeated, "said twice (keep it in one document and link to it):\n" + "\n".join(repeated)
