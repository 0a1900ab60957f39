"""The test lanes' own promise: under pytest-xdist (`make test`, `make test-gpu`: --dist loadgroup) the
tests of one xdist_group run on one worker, in order. test_cluster's and test_auth's Ray clusters rely on
it (two clusters on one machine made the second's rerun die), and test_ui checks its screenshots after
the tests that take them. pytest 9.2 silently broke it for pytest-xdist 3.8 (pytest-dev/pytest-xdist#1386):
the groups were dealt out like any test, and those tests failed for reasons that named neither."""

import pytest

pytestmark = pytest.mark.xdist_group("lane")


def test_a_group_stays_on_one_worker(request: pytest.FixtureRequest) -> None:
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("not run by pytest-xdist with --dist loadgroup: nothing is dealt out")
    # xdist keeps a group together by the suffix it gives its tests' ids; without it they go anywhere.
    assert request.node.nodeid.endswith("@lane"), (
        "pytest-xdist's --dist loadgroup is not grouping tests with this pytest (pytest-dev/pytest-xdist#1386, "
        "pytest 9.2): install pytest < 9.2 (`make install-dev` does)")


def test_no_worker_starts_with_two_heavy_tests() -> None:
    """tests.lane.dealt, as pytest-xdist's loadgroup scheduling takes the order: its units are the groups
    (largest first) then each other test; worker k starts with units k and workers + k, one after the other."""
    from tests.lane import dealt

    weights = {"kill": 3.2, "between": 2.7, "startup": 2.4, "ooms": 1.0, "ctrl_c": 1.0}
    tests = ["g1", "g1", "g2", *(f"light{i}" for i in range(40)), *weights]  # heavy ones collected last
    group = {"g1": "ray", "g2": "ui"}.get
    order = dealt(tests, 4, lambda t: weights.get(t, 0.0), group)
    assert sorted(order) == sorted(tests)
    units = [("g1",), ("g2",), *((t,) for t in order if group(t) is None)]  # the groups first, as xdist deals them
    workers = [[units[k][0], units[4 + k][0]] for k in range(4)]
    assert workers == [["g1", "light0"], ["g2", "light1"], ["kill", "light2"], ["between", "light3"]]
    assert all(sum(weights.get(t, 0.0) > 0 for t in w) <= 1 for w in workers)
    assert order[3 + 2 + 4:][:3] == ["startup", "ooms", "ctrl_c"]  # then the other heavy ones, longest first
