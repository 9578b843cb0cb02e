"""The package's layers (docs/architecture.md): imports point one way, from a higher layer to a lower one
or within a layer, and no set of modules imports itself round in a circle. Every import counts, those
inside functions too: a late import hides a circle, it does not remove it."""
from __future__ import annotations

import ast
from pathlib import Path

import chaincomp

ROOT = Path(chaincomp.__file__).parent

# Lowest first. A module belongs to the first entry whose name is it or a package above it.
LAYERS = [
    ("foundations", ["errors", "faults", "progress", "io", "safe_yaml", "report", "metrics", "models", "data", "device",
                     "energy"]),
    ("mechanisms", ["train", "qmodules", "exits", "fmc", "pruning", "arch", "ledger"]),
    ("stages", ["stages"]),
    ("runner", ["recipe", "chain", "api", "baselines"]),
    ("applications", ["studies", "deploy"]),
    ("command line", ["cli", "__main__"]),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in ROOT.rglob("*.py")}


def layer_of(mod: str) -> int:
    for i, (_, names) in enumerate(LAYERS):
        if any(mod == n or mod.startswith(n + ".") for n in names):
            return i
    raise AssertionError(f"chaincomp.{mod} is in no layer: add it to LAYERS here and to docs/architecture.md")


def imports_of(mod: str, path: Path, known: set[str]) -> set[str]:
    """The package modules `mod` imports (relative or absolute; `from . import x` counts x if a module)."""
    is_pkg = path.name == "__init__.py"
    here = mod.split(".") if mod else []
    pkg = here if is_pkg else here[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - (node.level - 1)] if node.level > 1 else list(pkg)
            elif node.module and node.module.split(".")[0] == "chaincomp":
                base = []
            else:
                continue
            target = base + (node.module.split(".") if node.module else [])
            if not node.level:
                target = target[1:]            # drop "chaincomp"
            t = ".".join(target)
            for alias in node.names:
                sub = f"{t}.{alias.name}" if t else alias.name
                found.add(sub if sub in known else t)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "chaincomp":
                    found.add(".".join(alias.name.split(".")[1:]))
    return {f for f in found if f != mod}


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    # the root package (`chaincomp`, holding __version__ and the lazy `compress`) is the facade: exempt
    return {m: {t for t in imports_of(m, p, known) if t} for m, p in mods.items() if m}


def test_every_module_has_a_layer():
    for m in graph():
        layer_of(m)


def test_no_upward_import():
    bad = []
    for m, targets in graph().items():
        for t in targets:
            if layer_of(t) > layer_of(m):
                bad.append(f"chaincomp.{m} ({LAYERS[layer_of(m)][0]}) imports chaincomp.{t} "
                           f"({LAYERS[layer_of(t)][0]})")
    assert not bad, "imports from a lower layer to a higher one:\n" + "\n".join(sorted(bad))


def test_no_stage_imports_another_stage():
    base = {"stages", "stages.base", "stages.registry"}
    bad = [f"chaincomp.{m} imports chaincomp.{t}" for m, ts in graph().items() if m.startswith("stages.")
           and m not in base for t in ts if t.startswith("stages") and t not in base]
    assert not bad, "\n".join(bad)


def find_cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each a circle of imports."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle():
    g = graph()
    # A package's __init__ re-exporting its modules, which import siblings through the package, is
    # not a circle of meaning: only module-to-module edges count, so drop edges into package __init__s
    # from their own submodules.
    g = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in g.items()}
    cycles = find_cycles(g)
    assert not cycles, "import circles:\n" + "\n".join(" <-> ".join(f"chaincomp.{m}" for m in c) for c in cycles)


def test_the_checker_finds_circles_and_upward_imports():
    """The two checks are not vacuous: a made-up graph with a circle and an upward edge is caught."""
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
    assert layer_of("cli.run") > layer_of("studies.order") > layer_of("chain") > layer_of("stages.prune") \
        > layer_of("pruning") > layer_of("io")


def _doc_example() -> str:
    """The stage file shown in docs/architecture.md (the first python block after 'One registry')."""
    doc = (Path(__file__).parents[1] / "docs" / "architecture.md").read_text()
    part = doc[doc.index("## One registry of techniques"):]
    return part.split("```python\n", 1)[1].split("```", 1)[0]


def test_a_stage_is_one_file(tmp_path):
    """The docs' example stage, dropped into a copy of the package as one file, is known everywhere:
    `check` validates a chain naming it and `run` applies and measures it (sparsity shows in the weights)."""
    import shutil
    import subprocess
    import sys

    pkg = tmp_path / "src" / "chaincomp"
    shutil.copytree(ROOT, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (pkg / "stages" / "magnitude.py").write_text(_doc_example())
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: m\nbaseline: {epochs: 1}\ndata: {name: digits, limit_train: 200}\n"
                      "model: {name: digits_cnn, width: 0.25}\n"
                      "chain: [{technique: magnitude, sparsity: 0.7, epochs: 0}]\n")
    code = ("import sys, torch; from chaincomp.cli import main; from chaincomp.chain import load_run;"
            f"assert main(['check', {str(recipe)!r}]) == 0;"
            f"assert main(['run', {str(recipe)!r}, '--out', {str(tmp_path / 'out')!r}]) == 0;"
            f"m = load_run({str(tmp_path / 'out')!r}).model;"
            "w = torch.cat([p.flatten() for n, p in m.named_parameters() if n.endswith('weight') and p.dim() > 1]);"
            "print('zeros', float((w == 0).double().mean()))")
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path / "src"), "CHAINCOMP_QUIET": "1"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "valid chain recipe 'm'" in r.stdout and "magnitude" in r.stdout
    zeros = float(r.stdout.split("zeros")[-1])
    assert zeros >= 0.69


def test_no_module_too_long_without_a_reason():
    """About 400 lines at most, unless the module's docstring says why it is longer."""
    long = []
    for m, p in modules().items():
        n = len(p.read_text().splitlines())
        if n > 420 and "longer than" not in (ast.get_docstring(ast.parse(p.read_text())) or ""):
            long.append(f"chaincomp.{m}: {n} lines")
    assert not long, "\n".join(long)


def test_a_command_that_fails_to_import_says_so(monkeypatch, capsys):
    """A broken command module is not a silently missing command: it stays listed, and using it is one
    line naming the module and the import error, exit 1; the other commands still work."""
    import importlib

    from chaincomp import cli

    real_import = importlib.import_module

    def broken(name, *a, **kw):
        if name == "chaincomp.cli.order":
            raise ModuleNotFoundError("No module named 'optuna'")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(cli.importlib, "import_module", broken)
    assert cli.main(["order", "--seeds", "2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "command 'order' is unavailable" in err[0] and "chaincomp.cli.order" in err[0] \
        and "optuna" in err[0]
    assert cli.main(["check"]) == 0
    assert "valid chain recipe" in capsys.readouterr().out
