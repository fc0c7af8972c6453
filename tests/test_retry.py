from neuronova.jobs.runner import backoff as job_backoff
from neuronova.outbox.store import backoff as outbox_backoff
from neuronova.retry import backoff


def test_one_backoff_rule_doubles_and_caps() -> None:
    assert [backoff(a, base=2.0, cap=10.0) for a in range(6)] == [2.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert job_backoff(3, base=1.0) == outbox_backoff(3, base=1.0) == backoff(3, base=1.0) == 4.0
    assert job_backoff(50) == 300.0 and outbox_backoff(50) == 3600.0  # each keeps its own cap
