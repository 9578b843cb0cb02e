"""Issue 15, class 8: error lines that quote hostile text, and garbage in the fault-injection variables.

`errors.clean`/`errors.one_line` strip terminal escape sequences and control characters; every
`UserError` is one clean line whoever prints it. `faults` refuses a malformed CHAINCOMP_KILL_AT /
CHAINCOMP_NAN_AT in one line naming the variable and its form."""
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chaincomp import faults
from chaincomp.errors import NonFiniteError, UserError, clean, one_line

PROPS = settings(derandomize=True, deadline=None, max_examples=100, database=None)
BAD = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff\ud800-\udfff]")


@pytest.mark.parametrize("text,expected", [
    ("\x1b[31mred\x1b[0m", "red"),
    ("\x1b[2J\x1b[Hcleared", "cleared"),
    ("\x1b]0;title\x07after", "after"),
    ("\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\", "link"),
    ("bell\x07", "bell"),
    ("del\x7f", "del"),
    ("c1\x9b31mcsi", "c1csi"),
    ("nel\x85x", "nelx"),
    ("bidi\u202eevil\u202c", "bidievil"),
    ("zero\u200bwidth", "zerowidth"),
    ("two\nlines\r\nand\ttab", "two lines and tab"),
    ("para\u2029sep", "para sep"),
    ("surrogate \udcff", "surrogate \\udcff"),
    ("lone \x1b", "lone"),
    ("keep: 'ä' → ok [1, 2]", "keep: 'ä' → ok [1, 2]"),
])
def test_one_line_strips_escapes(text, expected):
    assert one_line(text) == expected


@PROPS
@given(st.text(alphabet=st.one_of(st.characters(), st.sampled_from(list("\x1b[]0;?m\x07\x9b\x9d\\\n\r"))),
               max_size=200))
def test_one_line_is_always_one_clean_line(text):
    s = one_line(text)
    assert not BAD.search(s), repr(s)
    assert s == s.strip() and "  " not in s and len(s) <= 4000
    assert one_line(s) == s                    # idempotent
    assert str(UserError(text)) == s
    assert clean(text).count("\n") <= text.count("\n")


def test_printable_text_is_kept():
    text = "recipe.yaml: chain.1.ratio: Input should be less than 1 (got 3.5)"
    assert one_line(text) == text == str(UserError(text))


def test_long_lines_are_cut():
    assert one_line("x" * 10_000).endswith("...") and len(one_line("x" * 10_000)) == 4000


def test_non_finite_error_is_a_user_error():
    e = NonFiniteError("w.safetensors: bad\n", path="w.safetensors", tensor="fc.weight")
    assert isinstance(e, UserError) and str(e) == "w.safetensors: bad" and e.tensor == "fc.weight"


@pytest.mark.parametrize("value", ["train_step:x", "train_step:0", "train_step:-1", ":3", "a b:1", "x:1:2",
                                   "train_step:" + "9" * 5000, "\x1b[31m:1", "名前:1", "step:1.5"])
@pytest.mark.parametrize("var", faults.VARIABLES)
def test_garbage_fault_values_are_one_line(monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    with pytest.raises(UserError) as ei:
        faults.check_env()
    msg = str(ei.value)
    assert msg.startswith(f"{var}=") and "the form is name:n" in msg and "\n" not in msg and "\x1b" not in msg
    with pytest.raises(UserError):             # also where a point is first reached
        faults.point("train_step") if var == "CHAINCOMP_KILL_AT" else faults.nan("loss")


@pytest.mark.parametrize("value", ["train_step:3", "train_step", "loss:14", " chain_done:1 "])
def test_good_fault_values(monkeypatch, value):
    monkeypatch.setenv("CHAINCOMP_NAN_AT", value)
    faults.check_env()
    assert faults.parse("CHAINCOMP_NAN_AT", value)[1] >= 1


def test_unset_or_empty_costs_nothing(monkeypatch):
    monkeypatch.delenv("CHAINCOMP_KILL_AT", raising=False)
    monkeypatch.setenv("CHAINCOMP_NAN_AT", "")
    faults.check_env()
    assert faults.nan("loss") is False
