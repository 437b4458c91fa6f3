"""InferenceScheduler: request timing from the latency EMA, requests in flight, stale and old results."""

import pytest

from mvvdp_core.serving import InferenceScheduler, SchedulerConfig


def test_requests_at_once_when_idle_then_at_fraction_minus_latency():
    scheduler = InferenceScheduler(SchedulerConfig(request_fraction=0.5, initial_latency=0.4))
    assert scheduler.should_request(0.0)
    request = scheduler.start_request(0.0, observation_stamp=-0.02)
    assert not scheduler.should_request(0.01)  # one in flight
    decision = scheduler.finish_request(request.request_id, now=0.3, chunk_stamp=request.observation_stamp)
    assert decision.accepted and decision.latency == pytest.approx(0.3)
    assert scheduler.latency == pytest.approx(0.3)  # the first measurement replaces the initial guess
    scheduler.chunk_started(stamp=-0.02, duration=2.4)
    # ready at -0.02 + 1.2, minus the 0.3 s latency
    assert scheduler.next_request_time() == pytest.approx(0.88)
    assert not scheduler.should_request(0.87) and scheduler.should_request(0.89)


def test_latency_is_an_exponential_moving_average():
    scheduler = InferenceScheduler(SchedulerConfig(latency_smoothing=0.25, max_age=10.0))
    expected = None
    for i, latency in enumerate([0.4, 0.2, 0.2, 0.6]):
        request = scheduler.start_request(10.0 * i, 10.0 * i)
        scheduler.finish_request(request.request_id, 10.0 * i + latency, 10.0 * i)
        expected = latency if expected is None else 0.25 * latency + 0.75 * expected
        assert scheduler.latency == pytest.approx(expected)
    assert scheduler.measurements == 4


def test_stale_and_older_results_are_refused_and_failures_reported():
    scheduler = InferenceScheduler(SchedulerConfig(max_age=0.5))
    scheduler.chunk_started(stamp=3.0, duration=2.4)
    late = scheduler.start_request(3.5, observation_stamp=3.4)
    decision = scheduler.finish_request(late.request_id, now=4.0, chunk_stamp=3.4)
    assert not decision.accepted and "stale" in decision.reason
    old = scheduler.start_request(3.1, observation_stamp=2.9)
    decision = scheduler.finish_request(old.request_id, now=3.2, chunk_stamp=2.9)
    assert not decision.accepted and "older than the running" in decision.reason
    failed = scheduler.start_request(4.0, 4.0)
    assert scheduler.finish_request(failed.request_id, 4.1).reason == "inference failed"
    assert not scheduler.finish_request(12345, 4.2).accepted
    fresh = scheduler.start_request(4.2, 4.2)
    assert scheduler.finish_request(fresh.request_id, 4.4, 4.2).accepted


def test_lost_requests_expire_and_one_request_per_switch():
    scheduler = InferenceScheduler(SchedulerConfig(request_timeout=1.0, max_in_flight=2, initial_latency=0.2))
    scheduler.chunk_started(stamp=0.0, duration=2.0)
    assert scheduler.should_request(0.85)
    scheduler.start_request(0.85, 0.85)
    # a second slot is free, but the request for this switch is already out
    assert not scheduler.should_request(0.9)
    assert scheduler.should_request(1.9)  # the first one expired
    assert scheduler.in_flight == {}


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(request_fraction=1.5),
        dict(latency_smoothing=0),
        dict(max_age=0),
        dict(max_in_flight=0),
        dict(initial_latency=float("nan")),
        dict(request_timeout=-1),
    ],
)
def test_bad_parameters_are_named(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        SchedulerConfig(**kwargs)


def test_bad_times_are_refused():
    scheduler = InferenceScheduler()
    with pytest.raises(ValueError, match="finite"):
        scheduler.start_request(float("nan"), 0.0)
    with pytest.raises(ValueError, match="duration"):
        scheduler.chunk_started(0.0, -1.0)
