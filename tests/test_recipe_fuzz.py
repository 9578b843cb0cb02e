"""Property-based fuzzing of every recipe schema (chain, exit, fmc): whatever the input, validation
accepts it or answers with one line and exit status 2, never a traceback.

Most examples call the validation in-process (`check_document`, what `chaincomp check` runs, minus
the file and the argument parser) so that thousands fit in seconds; some go through `main` with a
file, and a handful through a real `python -m chaincomp check` subprocess."""
import copy
import math
import os
import subprocess
import sys

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chaincomp.cli import main
from chaincomp.errors import UserError
from chaincomp.cli.check import check_document, check_recipe
from chaincomp.recipe import builtin_recipes

# derandomize: the same examples every run, so CI is deterministic (a new failure is a code change)
FUZZ = settings(deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=True)

KEYS = ["name", "seed", "data", "model", "baseline", "chain", "technique", "ratio", "weight_bits", "act_bits",
        "epochs", "lr", "student", "width", "points", "threshold", "path", "steps", "global", "overrides", "x",
        "tasks", "exits", "predictive", "energy", "runtime", "throughput", "codec", "bits_in", "beta"]
TECH = ["distill", "prune", "quantize", "early_exit", "fmc", "", "PRUNE"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-10**30, max_value=10**30),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12), st.sampled_from(TECH))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(KEYS), inner, max_size=3)), max_leaves=8)
stage = st.fixed_dictionaries({"technique": st.sampled_from(TECH)},   # nesting inside stages: mutations below
                              optional={k: scalars for k in ["ratio", "weight_bits", "act_bits", "epochs", "lr",
                                                            "student", "points", "threshold", "steps"]} | {"x": values})
recipes = st.one_of(
    values,
    st.fixed_dictionaries({}, optional={"name": values, "seed": values, "data": values, "model": values,
                                        "baseline": values, "chain": st.lists(stage, max_size=4), "typo": values}),
)


def _deep(n, key="chain"):
    d = {}
    for _ in range(n):
        d = {key: [d]}
    return d


def _nested_list(n):
    x = []
    for _ in range(n):
        x = [x]
    return x


# ---- mutations of the built-in recipes: each starts valid and is broken in one to four places ----

SHALLOW = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-10**30, max_value=10**30),
    st.sampled_from([10**400, -10**400, 2**63, 2**31, -1, 0, 1]),                          # huge and edge numbers
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e308, -0.0, 5e-324]),
    st.text(max_size=8),
    st.sampled_from(["auto", "bof", "pool", "jump", "linear", "digits", "sr", "", "../../etc/passwd", "1e999",
                     "NaN", "adam", "jetson_tx2_cpu", "no_such_board", "/", "16", "a\nb"]),
    st.lists(st.one_of(st.integers(-20, 20), st.sampled_from([16, 8, "linear", "hlog", None])), max_size=4),
    st.dictionaries(st.sampled_from(KEYS), st.integers(-5, 5), max_size=2),
)
WILD = st.one_of(SHALLOW, st.integers(min_value=50, max_value=3000).map(_nested_list),    # deep nesting
                 st.integers(min_value=50, max_value=1000).map(lambda n: _deep(n, "x")))
UNKNOWN = st.sampled_from(["typo", "horizon", "exit", "task", "Tasks", "", "__class__", 1, 2.5, True, None])


def _spots(obj, depth=0):
    """(container, key) of every dict entry and list item, a few levels down (mutations go here)."""
    if depth > 6:
        return
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in list(items):
        yield obj, k
        yield from _spots(v, depth + 1)


@st.composite
def mutated(draw, bases, wild=WILD):
    obj = copy.deepcopy(draw(st.sampled_from(bases)))
    if draw(st.integers(0, 30)) == 0:
        return draw(wild)                                      # not a mapping at all
    for _ in range(draw(st.integers(1, 4))):
        spots = list(_spots(obj))
        if not spots:
            break
        parent, key = draw(st.sampled_from(spots))
        op = draw(st.sampled_from(["replace", "replace", "delete", "unknown", "wrap"]))
        if op == "replace":
            parent[key] = draw(wild)
        elif op == "delete":
            del parent[key]
        elif op == "wrap":                                     # right value, one level too deep
            parent[key] = draw(st.sampled_from([[parent[key]], {"value": parent[key]}]))
        elif isinstance(parent, dict):
            parent[draw(UNKNOWN)] = draw(wild)
        else:
            parent.append(draw(wild))
    return obj


BASES = {kind: [yaml.safe_load(t) for n, t in sorted(builtin_recipes().items())
                if (n.split("_")[0] if n.split("_")[0] in ("exit", "fmc") else "chain") == kind]
         for kind in ("chain", "exit", "fmc")}


def _finite(x) -> bool:
    if isinstance(x, float):
        return math.isfinite(x)
    if isinstance(x, dict):
        return all(_finite(v) for v in x.values())
    if isinstance(x, (list, tuple)):
        return all(_finite(v) for v in x)
    return True


def _check(obj, kind):
    """Validation either accepts (one line, no NaN/inf let through) or raises UserError naming the source."""
    try:
        line = check_document(obj, "fuzz.yaml", kind)
    except UserError as e:
        assert str(e).strip()
        return 2
    assert line.startswith("fuzz.yaml: valid") and "\n" not in line
    return 0


@pytest.mark.parametrize("kind", ["chain", "exit", "fmc"])
def test_builtin_recipes_are_valid_and_detected(kind):
    for obj in BASES[kind]:
        assert _check(obj, kind) == 0
        assert check_document(obj, "fuzz.yaml").startswith(f"fuzz.yaml: valid {kind} recipe")


@settings(FUZZ, max_examples=1000)
@given(recipes)
def test_generated_chain_recipes(obj):
    assert _check(obj, "chain") in (0, 2)


@settings(FUZZ, max_examples=1000)
@given(mutated(BASES["chain"]))
def test_mutated_chain_recipes(obj):
    assert _check(obj, "chain") in (0, 2)


def _valid_or_refused(obj, kind: str) -> None:
    """A mutated exit/fmc recipe is refused (status 2), or valid with every number finite."""
    from chaincomp.studies.predictive_exit import ExitRecipe
    from chaincomp.studies.feature_maps import FmcRecipe
    if _check(obj, kind) == 0:
        schema = {"exit": ExitRecipe, "fmc": FmcRecipe}[kind]
        assert _finite(schema.model_validate({} if obj is None else obj).model_dump())


@settings(FUZZ, max_examples=1500)
@given(mutated(BASES["exit"]))
def test_mutated_exit_recipes(obj):
    _valid_or_refused(obj, "exit")


@settings(FUZZ, max_examples=1500)
@given(mutated(BASES["fmc"]))
def test_mutated_fmc_recipes(obj):
    _valid_or_refused(obj, "fmc")


@settings(FUZZ, max_examples=300)
@given(st.sampled_from(["chain", "exit", "fmc"]).flatmap(lambda k: mutated(BASES[k])))
def test_kind_detected_from_keys(obj):
    """Without --kind the keys decide; a mutation mixing two kinds' keys is refused, not guessed."""
    assert _check(obj, None) in (0, 2)


def _write(path, obj):
    try:
        path.write_text(yaml.safe_dump(obj))
    except (RecursionError, yaml.YAMLError):
        path.write_text("x: " + "[" * 3000 + "]" * 3000)


@settings(FUZZ, max_examples=300)
@given(st.sampled_from(["chain", "exit", "fmc"]).flatmap(lambda k: st.tuples(st.just(k), mutated(BASES[k], SHALLOW))))
def test_through_the_command_line(tmp_path_factory, capsys, kind_obj):
    """Through `main` and a YAML file: exit status 0 or 2, exactly one line on stdout or stderr (deep
    nesting, slow to write as YAML, has its own test below)."""
    kind, obj = kind_obj
    p = tmp_path_factory.getbasetemp() / "fuzz.yaml"
    _write(p, obj)
    code = main(["check", str(p), "--kind", kind])
    out, err = capsys.readouterr()
    assert code in (0, 2)
    text = out if code == 0 else err
    assert len(text.strip().splitlines()) == 1, text
    assert code == 0 or err.startswith("chaincomp: error:")


@settings(FUZZ, max_examples=300)
@given(st.binary(max_size=300), st.sampled_from([None, "chain", "exit", "fmc"]))
def test_random_bytes(tmp_path_factory, raw, kind):
    p = tmp_path_factory.getbasetemp() / "raw.yaml"
    p.write_bytes(raw)
    assert main(["check", str(p)] + (["--kind", kind] if kind else [])) in (0, 2)


@pytest.mark.parametrize("kind", ["chain", "exit", "fmc"])
def test_deep_nesting_and_huge_numbers(tmp_path, capsys, kind):
    cases = {"chain": [_deep(2000), {"seed": 10**400}, {"baseline": {"epochs": 10**100}},
                       {"chain": [{"technique": "prune", "ratio": float("nan")}]}],
             "exit": [_deep(2000, "exits"), {"seed": 10**400}, {"exits": {"codewords": 10**100}},
                      {"predictive": {"beta": float("nan")}}, {"energy": {"slack": float("inf")}},
                      {"runtime": {"limit": _nested_list(2000)}}],
             "fmc": [_deep(2000, "tasks"), {"seed": 10**400}, {"throughput": {"batch": 10**100}},
                     {"tasks": [{"codec": {"block": [1, 8, float("nan")]}}]},
                     {"tasks": [{"bits_in": [float("inf")]}]}, {"tasks": [{"points": _nested_list(2000)}]}]}
    for obj in cases[kind]:
        p = tmp_path / "r.yaml"
        _write(p, obj)
        assert main(["check", str(p), "--kind", kind]) == 2, obj
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == len(cases[kind])
    assert all(line.startswith("chaincomp: error:") for line in lines)


def test_yaml_nested_past_the_parser(tmp_path):
    """Every kind is read by the same YAML reader, so one kind shows it."""
    p = tmp_path / "nested.yaml"
    p.write_text("a: " + "[" * 20000 + "]" * 20000)
    with pytest.raises(UserError, match="nested too deeply"):
        check_recipe(str(p), "exit")


SUBPROCESS_CASES = {       # a handful through the real executable (each costs a Python start)
    "exit-deep": ("exit", "exits: " + "[" * 1500 + "]" * 1500 + "\n", "nested too deeply"),
    "exit-nan": ("exit", "predictive: {beta: .nan}\n", "predictive.beta"),
    "fmc-huge": ("fmc", "seed: " + "9" * 500 + "\n", "seed"),
    "mixed-kinds": (None, "exits: {head: bof}\ntasks: []\n", "cannot tell which kind"),
}


@pytest.mark.parametrize("kind,text,needle", SUBPROCESS_CASES.values(), ids=SUBPROCESS_CASES)
def test_real_command_line(tmp_path, kind, text, needle):
    """The real executable: status 2, one line naming the problem, no traceback."""
    p = tmp_path / "r.yaml"
    p.write_text(text)
    p = subprocess.run([sys.executable, "-m", "chaincomp", "check", str(p)] + (["--kind", kind] if kind else []),
                       capture_output=True, text=True, timeout=120, env={**os.environ, "CHAINCOMP_QUIET": "1"})
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("chaincomp: error:") and needle in lines[0], p.stderr


def test_deep_value_from_the_api_is_refused_before_pydantic(monkeypatch):
    """A deep list as a stage's discriminator made pydantic report its failed repr through
    sys.unraisablehook (a second message on stderr); the depth check refuses it first."""
    import sys

    from chaincomp.recipe import parse_recipe

    caught = []
    monkeypatch.setattr(sys, "unraisablehook", caught.append)
    obj = copy.deepcopy(BASES["chain"][0])
    obj["chain"][0]["technique"] = _nested_list(3000)
    with pytest.raises(UserError, match="nested too deeply"):
        parse_recipe(obj, "api")
    assert caught == []
    obj["chain"][0]["technique"] = _nested_list(20)  # a shallow bad value is an ordinary field error
    with pytest.raises(UserError, match=r"chain\.0"):
        parse_recipe(obj, "api")
