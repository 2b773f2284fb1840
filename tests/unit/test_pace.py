"""How prefetch depth follows the run times workers report."""

from __future__ import annotations

from orchestrator.supervisor.pace import MAX_DEPTH, WINDOW_S, Pace


def test_a_type_not_measured_yet_is_held_one_task_ahead() -> None:
    assert Pace().depth("new") == 1


def test_depth_is_about_a_window_of_work_between_one_and_the_most() -> None:
    pace = Pace()
    for task_type, run_s in (("noop", 2e-6), ("ms", 0.001), ("slow", WINDOW_S), ("hours", 3600.0)):
        pace.observe(task_type, run_s)
    assert pace.depth("noop") == MAX_DEPTH
    assert pace.depth("ms") == 10
    assert pace.depth("slow") == 1
    assert pace.depth("hours") == 1


def test_one_long_run_makes_it_cautious_at_once_and_short_ones_bold_again_slowly() -> None:
    pace = Pace()
    for _ in range(20):
        pace.observe("mixed", 1e-5)
    assert pace.depth("mixed") == MAX_DEPTH
    pace.observe("mixed", 0.5)
    assert pace.depth("mixed") == 1
    depths = []
    for _ in range(40):
        pace.observe("mixed", 1e-5)
        depths.append(pace.depth("mixed"))
    assert depths == sorted(depths), "it grows back monotonically"
    assert depths[0] == 1
    assert depths[-1] == MAX_DEPTH


def test_types_are_paced_apart() -> None:
    pace = Pace()
    pace.observe("a", 1e-5)
    pace.observe("b", 1.0)
    assert (pace.depth("a"), pace.depth("b")) == (MAX_DEPTH, 1)


def test_run_times_at_the_edges_of_a_float_give_a_depth_in_range() -> None:
    # A worker's clock is its own word: whatever finite, non-negative time it reports (decode
    # refuses the rest), the depth stays between one and the most.
    pace = Pace()
    for run_s in (0.0, 5e-324, 1e308, 0.0, 1e-300, 1e308):
        pace.observe("edge", run_s)
        assert 1 <= pace.depth("edge") <= MAX_DEPTH
