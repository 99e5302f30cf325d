"""Property tests: whatever YAML or structure arrives, the loader raises only LockError, with a place."""

from __future__ import annotations

import string

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.errors import LockError
from reconciler.lockfile import lock_from_data, parse_yaml

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                    st.text(max_size=12))
trees = st.recursive(scalars, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                     st.dictionaries(st.text(max_size=8), kids, max_size=4)),
                     max_leaves=20)
path_text = st.text(alphabet=string.ascii_lowercase + "/._-", min_size=0, max_size=12)
artifact = st.fixed_dictionaries({}, optional={
    "build": st.fixed_dictionaries({"transform": st.sampled_from(["copy", "write_json", "nope"])},
                                   optional={"inputs": st.dictionaries(st.sampled_from(["src", "x"]), path_text,
                                                                       max_size=2),
                                             "params": st.dictionaries(st.sampled_from(["data", "y"]), trees,
                                                                       max_size=2)}),
    "fetch": st.fixed_dictionaries({"source": st.sampled_from(["s", "t"])}, optional={"path": path_text}),
    "sha256": st.one_of(st.none(), st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)),
    "checks": st.lists(st.one_of(st.sampled_from(["same_sha256", "rows", "bogus"]), trees), max_size=2),
})
locks = st.fixed_dictionaries({
    "version": st.sampled_from([1, 1, 2, "1"]),
    "storage_version": st.sampled_from(["2.0.0", 2]),
    "sources": st.dictionaries(st.sampled_from(["s", "t"]), st.fixed_dictionaries(
        {"repo": st.sampled_from(["a/b", "bad"]), "type": st.sampled_from(["model", "dataset", "x"]),
         "revision": st.sampled_from(["main", "0" * 40])}), max_size=2),
    "artifacts": st.dictionaries(path_text, artifact, max_size=4),
})


def _loads_or_lock_error(data) -> None:
    try:
        lock_from_data(data)
    except LockError as e:
        assert e.message and (e.where or "line" in e.message)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees)
def test_arbitrary_structures_raise_only_lock_errors(data):
    _loads_or_lock_error(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(locks)
def test_lock_shaped_structures_raise_only_lock_errors(data):
    _loads_or_lock_error(data)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_raises_only_lock_errors(text):
    try:
        _loads_or_lock_error(parse_yaml(text, "fuzz.yaml"))
    except LockError as e:
        assert e.where == "fuzz.yaml"


@settings(max_examples=200, deadline=None)
@given(locks)
def test_yaml_round_trip_of_lock_shaped_text(data):
    try:
        text = yaml.safe_dump(data)
    except yaml.YAMLError:
        return
    _loads_or_lock_error(parse_yaml(text, "fuzz.yaml"))  # valid YAML: only the validator may object
