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
