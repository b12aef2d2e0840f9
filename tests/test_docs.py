"""The documentation lives in the repository: its examples run, its links resolve, and no file of
the project points at a document outside it."""
import ast
import io
import pathlib
import re
import subprocess
import tokenize

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").rglob("*.md"))
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _tracked_text_files():
  names = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
  for name in names:
    path = ROOT / name
    if path.suffix in {".py", ".md", ".toml", ".txt", ".sh", ".cfg", ".json", ".yaml", ""} and path.is_file():
      yield path


def test_the_docs_pages_exist():
  names = {p.relative_to(ROOT / "docs").as_posix() for p in DOCS}
  assert {"index.md", "spec.md", "surgery.md", "training.md", "methods/easier.md",
          "methods/egp.md", "methods/nepenthe.md", "methods/lacoot.md", "methods/tlc.md",
          "methods/writing.md"} <= names


@pytest.mark.parametrize("page", [p for p in DOCS if BLOCK.search(p.read_text())],
                         ids=lambda p: p.relative_to(ROOT).as_posix())
def test_python_blocks_of_a_docs_page_run(page, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)   # examples may write runs/ or out/
  namespace = {"__name__": "__docs__"}
  for i, code in enumerate(BLOCK.findall(page.read_text())):
    exec(compile(code, f"{page.name} python block {i + 1}", "exec"), namespace)  # pylint: disable=exec-used


def test_no_file_cites_a_document_outside_the_repository():
  # Spelled in pieces so that this file does not match itself.
  outside = [re.escape("METHODS" + ".md"), re.escape("DESIGN" + ".md"), r"\.\./" + "shared",
             r"(?<![\w.])" + "sha" + "red/", "notes/" + "environment", "notes/" + "ecosystem",
             "github" + r"\.com/"]
  pattern = re.compile("|".join(outside))
  hits = []
  for path in _tracked_text_files():
    name = path.relative_to(ROOT)
    if name.parts[0] == "tests" and path.suffix == ".py":
      # A test may look for these strings (asserting their absence); its prose may not cite them.
      hits += [f"{name}: {text.strip()}" for text in _prose(path) if pattern.search(text)]
    else:
      hits += [f"{name}:{n}: {line.strip()}"
               for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
               if pattern.search(line)]
  assert not hits, "\n".join(hits)


def _prose(path):
  """The comments and docstrings of a Python file."""
  source = path.read_text()
  for token in tokenize.generate_tokens(io.StringIO(source).readline):
    if token.type == tokenize.COMMENT:
      yield token.string
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
      doc = ast.get_docstring(node)
      if doc:
        yield doc


def test_links_and_docs_references_resolve():
  missing = []
  for page in DOCS + [ROOT / "README.md"]:
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
      if "://" not in target and not (page.parent / target).exists():
        missing.append(f"{page.relative_to(ROOT)} -> {target}")
  for path in _tracked_text_files():
    for ref in re.findall(r"\bdocs/[\w/.-]*\w", path.read_text(errors="replace")):
      if not (ROOT / ref).exists():
        missing.append(f"{path.relative_to(ROOT)} -> {ref}")
  assert not missing, missing
