"""The one-way data flow of docs/architecture.md, checked on the source.

The chain at the top of docs/architecture.md orders the public modules;
a module may import only modules strictly to its left (modules of the
same group, separated by commas, do not import each other), plus the
private ``hypuc_jax._*`` helpers. This test parses the chain from the
document and every ``hypuc_jax`` import from the package's source with
``ast``, so a module that starts reaching upstream fails here.
"""
import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _chain_levels() -> dict[str, int]:
  doc = (ROOT / "docs" / "architecture.md").read_text()
  block = doc.split("one module per stage:")[1].split("A module may")[0]
  levels = {}
  for level, group in enumerate(block.split("->")):
    for name in re.split(r"[,\s]+", group.strip()):
      if name:
        levels[name] = level
  return levels


def _package_imports(path: pathlib.Path) -> set[str]:
  """Top-level hypuc_jax modules imported by one source file."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      parts = node.module.split(".")
      if parts[0] != "hypuc_jax":
        continue
      found.update([a.name for a in node.names] if len(parts) == 1 else [parts[1]])
    elif isinstance(node, ast.Import):
      for alias in node.names:
        parts = alias.name.split(".")
        if parts[0] == "hypuc_jax" and len(parts) > 1:
          found.add(parts[1])
  return found


def test_chain_lists_every_public_module():
  levels = _chain_levels()
  modules = {p.stem if p.suffix else p.name for p in (ROOT / "hypuc_jax").iterdir()
             if (p.suffix == ".py" or (p / "__init__.py").exists())
             and not p.name.startswith("_")}
  assert modules == set(levels), (sorted(modules - set(levels)), sorted(set(levels) - modules))


def test_modules_import_only_upstream():
  levels = _chain_levels()
  violations = []
  for path in sorted((ROOT / "hypuc_jax").rglob("*.py")):
    module = path.relative_to(ROOT / "hypuc_jax").parts[0].removesuffix(".py")
    if module.startswith("_"):
      continue
    for imported in _package_imports(path):
      if imported.startswith("_") or imported == module:
        continue
      if levels[imported] >= levels[module]:
        violations.append(f"{path.relative_to(ROOT)} imports {imported}")
  assert not violations, violations


def test_the_checker_sees_an_upstream_import(tmp_path):
  """The import scanner finds both import forms (so the test above can fail)."""
  src = tmp_path / "m.py"
  src.write_text("from hypuc_jax import cli, metrics\nimport hypuc_jax.report as r\n"
                 "from hypuc_jax.train import predict\nfrom . import local\n")
  assert _package_imports(src) == {"cli", "metrics", "report", "train"}


def test_package_attribute_gives_each_public_module():
  """``import hypuc_jax as hj; hj.kde`` works in a fresh interpreter (lazily, PEP 562)."""
  import subprocess
  import sys
  names = sorted(p.stem for p in (ROOT / "hypuc_jax").glob("*.py") if not p.stem.startswith("_"))
  names.append("data")
  code = ("import hypuc_jax as hj, sys\n"
          f"for n in {names!r}:\n"
          "    assert getattr(hj, n) is sys.modules['hypuc_jax.' + n], n\n"
          "assert set(dir(hj)) >= set(" + repr(names) + ")\n"
          "try:\n    hj.no_such_module\nexcept AttributeError as e:\n    print(e)\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == "module 'hypuc_jax' has no attribute 'no_such_module'"
