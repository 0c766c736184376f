"""The three ways of computing an event hash must agree byte for byte."""

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from audit.chain import (
    HASHED_FIELDS,
    JSON_FIELDS,
    canonical_json,
    event_hash,
    event_hash_from_text,
    make_row_hasher,
    timestamp_text,
)

text = st.text(max_size=30)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False) | text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=12,
)
fields_strategy = st.fixed_dictionaries(
    {
        **{name: text for name in HASHED_FIELDS if name not in JSON_FIELDS},
        "seq": st.integers(1, 2**40),
        "agent_id": st.none() | st.integers(1, 2**40),
        "latency_ms": st.none() | st.floats(0, 1e9, allow_nan=False),
        "timestamp": st.datetimes(
            min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
        ),
        **dict.fromkeys(JSON_FIELDS, json_values),
    }
)


@settings(max_examples=300, deadline=None)
@given(fields=fields_strategy, previous=st.text(alphabet="0123456789abcdef", min_size=64, max_size=64))
def test_reference_text_and_row_hashes_agree(fields, previous):
    reference = event_hash(fields, previous)
    texts = {**fields, **{name: canonical_json(fields[name]) for name in JSON_FIELDS}}
    assert event_hash_from_text(texts, previous) == reference
    # one_statement_append hashes (and sends) the timestamp as its text
    assert event_hash_from_text({**texts, "timestamp": timestamp_text(fields["timestamp"])}, previous) == reference
    columns = (*HASHED_FIELDS, "previous_hash")
    row = (*(texts[c] for c in HASHED_FIELDS), previous)
    assert make_row_hasher(columns)(row) == reference
