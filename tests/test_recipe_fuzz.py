"""Property-based fuzzing of recipes: whatever the input, `chaincomp check` answers with a
validation message and exit status 2 (or accepts a valid recipe), never a traceback."""
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chaincomp.cli import main

KEYS = ["name", "seed", "data", "model", "baseline", "chain", "technique", "ratio", "weight_bits", "act_bits",
        "epochs", "lr", "student", "width", "points", "threshold", "path", "steps", "global", "overrides", "x"]
TECH = ["distill", "prune", "quantize", "early_exit", "fmc", "", "PRUNE"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-10**30, max_value=10**30),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12), st.sampled_from(TECH))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)), max_leaves=20)
stage = st.fixed_dictionaries({"technique": st.sampled_from(TECH)},
                              optional={k: values for k in ["ratio", "weight_bits", "act_bits", "epochs", "lr",
                                                           "student", "points", "threshold", "steps", "x"]})
recipes = st.one_of(
    values,
    st.fixed_dictionaries({}, optional={"name": values, "seed": values, "data": values, "model": values,
                                        "baseline": values, "chain": st.lists(stage, max_size=5), "typo": values}),
)


def _deep(n):
    d = {}
    for _ in range(n):
        d = {"chain": [d]}
    return d


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(recipes)
def test_malformed_recipes_end_in_one_line_and_status_2(tmp_path_factory, obj):
    p = tmp_path_factory.getbasetemp() / "fuzz.yaml"
    try:
        text = yaml.safe_dump(obj)
    except Exception:
        text = str(obj)
    p.write_text(text)
    code = main(["check", str(p)])
    assert code in (0, 2)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=300))
def test_random_bytes(tmp_path_factory, raw):
    p = tmp_path_factory.getbasetemp() / "raw.yaml"
    p.write_bytes(raw)
    assert main(["check", str(p)]) in (0, 2)


def test_deep_nesting_and_huge_numbers(tmp_path, capsys):
    for obj in (_deep(2000), {"seed": 10**400}, {"baseline": {"epochs": 10**100}},
                {"chain": [{"technique": "prune", "ratio": float("nan")}]}):
        p = tmp_path / "r.yaml"
        try:
            p.write_text(yaml.safe_dump(obj))
        except RecursionError:
            p.write_text("chain: " + "[" * 5000 + "]" * 5000)
        assert main(["check", str(p)]) == 2
    p = tmp_path / "nested.yaml"
    p.write_text("a: " + "[" * 20000 + "]" * 20000)
    assert main(["check", str(p)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert all(line.startswith("chaincomp: error:") for line in lines)
