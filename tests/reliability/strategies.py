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

#: query-string values: plain text plus values that stress parsers (no surrogates: URLs are
#: UTF-8)
QUERY_TEXT = st.one_of(
    st.text(st.characters(exclude_categories=["Cs"]), max_size=20),
    st.sampled_from([
        "", "0", "-1", "1.5", "1e3", "99999999999999999999", "-99999999999999999999",
        "9223372036854775808", "null", "true", "\x00", "idle", "running", "failed",
        "2024-01-01T00:00:00Z", "9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00",
        "2024-02-30", "now", "%", "_", "a" * 300,
    ]))
QUERY_KEYS = st.sampled_from([
    "status", "created_after", "created_before", "search", "page", "page_size", "limit",
    "after_seq", "cursor", "ordering", "format", "owner", "x"])
QUERY = st.dictionaries(QUERY_KEYS, QUERY_TEXT, max_size=3)
#: a request body: JSON (often shaped like the real one), or raw bytes under some content type
JSON_BODY = st.one_of(
    JSON,
    st.fixed_dictionaries({}, optional={"input": INPUTS, "instruction_args": INSTRUCTION_ARGS,
                                        "title": JSON, "status": JSON}))
RAW_BODY = st.tuples(
    st.binary(max_size=64) | st.sampled_from([b"{", b"[1,", b'{"input": NaN}', b"\xff\xfe",
                                             b'{"input": {"message": "\\ud800"}}',
                                             b"[" * 5000 + b"]" * 5000]),
    st.sampled_from(["application/json", "text/plain", "multipart/form-data",
                     "application/x-www-form-urlencoded", "application/json; charset=latin-1"]))
