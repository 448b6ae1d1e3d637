"""The append-only cache survives a kill at any byte."""

from pipeline.jsonl import JsonlCache, key_of


def test_entries_come_back_after_reopening_and_a_key_is_written_once(tmp_path):
    path = tmp_path / "c.jsonl"
    cache = JsonlCache(path)
    cache.put("a", reply="one")
    cache.put("a", reply="again")
    cache.put("b", reply="two")
    cache = JsonlCache(path)
    assert cache.get("a")["reply"] == "one" and "b" in cache and len(cache) == 2
    assert len(path.read_text().splitlines()) == 2


def test_a_line_torn_by_a_kill_is_dropped_and_the_next_append_is_clean(tmp_path):
    path = tmp_path / "c.jsonl"
    JsonlCache(path).put("a", reply="one")
    with open(path, "a") as f:
        f.write('{"key": "b", "reply": "tw')  # killed mid-write
    cache = JsonlCache(path)
    assert cache.dropped == 1 and "b" not in cache
    cache.put("b", reply="two")
    cache = JsonlCache(path)
    assert cache.dropped == 0 and cache.get("b")["reply"] == "two" and len(cache) == 2


def test_keys_are_stable_hashes_of_their_parts():
    assert key_of({"b": 1, "a": [1, 2]}, "x") == key_of({"a": [1, 2], "b": 1}, "x")
    assert key_of("x", 1) != key_of("x", 2)
