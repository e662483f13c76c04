"""The search space: override lists to candidates, and the overrides Hydra reads back."""

from __future__ import annotations

from hydra.core.override_parser.overrides_parser import OverridesParser

from runner.tune import space


def test_every_combination_in_the_space_order_last_key_fastest():
    found = space.expand({"serve.quantization": [None, "fp8"], "serve.max_num_seqs": [64, 256]})
    assert [c.overrides for c in found] == [
        ("serve.quantization=null", "serve.max_num_seqs=64"),
        ("serve.quantization=null", "serve.max_num_seqs=256"),
        ("serve.quantization=fp8", "serve.max_num_seqs=64"),
        ("serve.quantization=fp8", "serve.max_num_seqs=256"),
    ]
    assert found[2].as_dict() == {"serve.quantization": "fp8", "serve.max_num_seqs": 64}
    assert len({c.id for c in found}) == 4


def test_nested_maps_are_dotted_keys_and_a_scalar_is_one_value():
    nested = space.expand({"serve": {"max_num_seqs": [4, 8], "kv_cache_dtype": "fp8"}})
    flat = space.expand({"serve.max_num_seqs": [4, 8], "serve.kv_cache_dtype": ["fp8"]})
    assert [c.overrides for c in nested] == [c.overrides for c in flat]


def test_ids_are_stable_and_free_of_override_syntax():
    a = space.expand({"serve.max_num_seqs": [4], "serve.quantization": ["fp8"]})[0]
    b = space.expand({"serve.max_num_seqs": [4], "serve.quantization": ["fp8"]})[0]
    assert a.id == b.id == "serve.max_num_seqs-4+serve.quantization-fp8"
    assert not set("=,'\" /") & set(a.id)


def test_rendered_values_parse_back_to_the_same_value():
    parser = OverridesParser.create()
    values = [None, True, False, 0, 64, 0.9, "fp8", "fp8_e4m3", "null", "8", "a b", "it's", {"a": 1}, [1, 2]]
    for value in values:
        parsed = parser.parse_override(f"serve.x={space.render_value(value)}").value()
        assert parsed == value, (value, space.render_value(value))


def test_quoted_path_parses_back_unchanged():
    path = "/tmp/run=1/candidates/serve.max_num_seqs-4+serve.quantization-fp8/plan"
    parsed = OverridesParser.create().parse_override(f"hydra.run.dir={space.quoted(path)}").value()
    assert parsed == path


def test_problems_name_the_key_and_a_fix():
    assert [p.key for p in space.problems({})] == ["tune.space"]
    found = space.problems({"serve.max_num_seqs": [], "mode": ["plan"]})
    assert {p.key for p in found} == {"tune.space.serve.max_num_seqs", "tune.space.mode"}
    assert all(p.fix for p in found)
    assert space.problems({"serve.max_num_seqs": [4, 8]}) == []
