"""Hypothesis strategies for hostile input: arbitrary JSON, nasty strings, broken bodies."""

from __future__ import annotations

from hypothesis import strategies as st

NASTY = st.sampled_from([
    "", " ", "\x00", "a\x00b", "\ud800", "\udfff", "\u2028", "\ufeff", "\u202e", "💥" * 3,
    "null", "true", "0", "-1", "1e999", "NaN", "{{ company_name }}", "{% debug %}",
    "{{ request }}", "' OR 1=1 --", "../../etc/passwd", "<script>x</script>", "a" * 10_001,
    "é" * 300,
])
TEXT = st.one_of(st.text(max_size=24), NASTY)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False), TEXT)
JSON = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(TEXT, children, max_size=3),
    max_leaves=8)
#: agent input: anything, or something close to ``{"message": ...}``
INPUTS = st.one_of(
    JSON, TEXT,
    st.dictionaries(st.sampled_from(["message", "Message", "extra", "content"]), JSON,
                    min_size=1, max_size=2))
#: instruction args: anything, or something close to ``{"company_name": ...}``
INSTRUCTION_ARGS = st.one_of(
    st.none(), JSON,
    st.dictionaries(st.sampled_from(["company_name", "other", ""]), JSON, max_size=2))
