"""The approved call's progress after a hold, message by message (the end-to-end run with the SDK
client is in test_hold.py; these are the upstream shapes the demo server does not send)."""

from proxy.hold import KEEPALIVE, _ProgressAfterHold


def progress(token, value, total=None):
    params = {"progressToken": token, "progress": value, "message": "m"}
    if total is not None:
        params["total"] = total
    return {"jsonrpc": "2.0", "method": "notifications/progress", "params": params}


def values(after_hold, messages):
    out = [after_hold.rewrite(m) for m in messages]
    return [m["params"]["progress"] if m is not None else None for m in out]


def test_an_upstream_counting_from_zero_loses_only_the_value_that_would_repeat_the_holds():
    after_hold = _ProgressAfterHold(7, 2)  # the hold sent 1 and 2 on token 7
    assert values(after_hold, [progress(7, 0, 4), progress(7, 0.5, 4), progress(7, 4, 4)]) == [None, 2.5, 6]


def test_total_moves_with_progress_and_other_messages_pass_unchanged():
    after_hold = _ProgressAfterHold("tok", 3)
    shifted = after_hold.rewrite(progress("tok", 1, 10))
    assert shifted["params"] == {"progressToken": "tok", "progress": 4, "total": 13, "message": "m"}
    for other in (progress("other", 1), progress(7, 1), {"jsonrpc": "2.0", "id": 1, "result": {}}, KEEPALIVE):
        assert after_hold.rewrite(other) is other


def test_without_hold_progress_the_upstreams_values_pass_as_they_came():
    after_hold = _ProgressAfterHold(7, 0)
    message = progress(7, 0, 2)
    assert after_hold.rewrite(message) is message
