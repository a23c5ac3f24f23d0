"""The challenge clock: validation and compile warm-up are not counted; the stop and the clock are agreed by ranks."""

import time
from types import SimpleNamespace

import pytest
import torch

from golf.callbacks.budget import WallClockBudget


class FakeStrategy:
    """Single-process stand-in; ``peer_elapsed`` plays another rank's clock in the MAX all-reduce."""

    def __init__(self, peer_elapsed: float = 0.0) -> None:
        self.peer_elapsed = peer_elapsed

    def reduce(self, tensor, reduce_op="mean"):
        assert reduce_op == "max"
        return torch.maximum(tensor, torch.tensor([self.peer_elapsed], dtype=tensor.dtype))


def fake_trainer(peer_elapsed=0.0, world_size=2):
    return SimpleNamespace(strategy=FakeStrategy(peer_elapsed), should_stop=False, global_step=0, world_size=world_size)


CPU_MODULE = SimpleNamespace(device=torch.device("cpu"))


def step(cb, trainer, seconds):
    cb.on_train_batch_start(trainer, CPU_MODULE, None, 0)
    time.sleep(seconds)
    trainer.global_step += 1
    cb.on_train_batch_end(trainer, CPU_MODULE, None, None, 0)


def test_validation_and_warmup_time_are_not_counted():
    cb, trainer = WallClockBudget(budget_seconds=100), fake_trainer()
    time.sleep(0.2)  # compile warm-up happens before the first on_train_batch_start
    step(cb, trainer, 0.05)
    cb.on_validation_start(trainer, CPU_MODULE)
    time.sleep(0.3)  # a validation pass
    step(cb, trainer, 0.05)
    assert 0.1 <= cb.elapsed() < 0.2
    assert cb.agreed_elapsed == pytest.approx(cb.elapsed(), abs=0.02)


def test_stops_when_any_rank_is_over_and_all_ranks_see_the_same_clock():
    cb, trainer = WallClockBudget(budget_seconds=10, reserve_seconds=2), fake_trainer(peer_elapsed=8.5)
    step(cb, trainer, 0.01)
    assert trainer.should_stop and cb.stopped_at_step == 1  # this rank is at 0.01 s, the slow one at 8.5 >= 10 - 2
    assert cb.agreed_elapsed == 8.5 and cb.fraction() == pytest.approx(8.5 / 8)


def test_one_process_reads_its_clock_on_the_host_without_a_collective():
    class NoCollective(FakeStrategy):
        def reduce(self, tensor, reduce_op="mean"):
            raise AssertionError("one process must not round-trip its clock through a device tensor")

    cb, trainer = WallClockBudget(budget_seconds=0.05), fake_trainer(world_size=1)
    trainer.strategy = NoCollective()
    step(cb, trainer, 0.06)
    assert trainer.should_stop and cb.agreed_elapsed == pytest.approx(cb.elapsed(), abs=0.02)


def test_budget_survives_resume():
    cb, trainer = WallClockBudget(budget_seconds=100), fake_trainer()
    step(cb, trainer, 0.05)
    state = cb.state_dict()
    again = WallClockBudget(budget_seconds=100)
    again.load_state_dict(state)
    assert again.elapsed() == pytest.approx(state["spent"]) and again.steps_timed == 1


def test_bad_budget_arguments():
    with pytest.raises(ValueError, match="reserve_seconds"):
        WallClockBudget(budget_seconds=10, reserve_seconds=10)


def test_lr_schedule_is_constant_then_linear_warmdown_on_the_agreed_clock():
    from golf.model import GolfLM, ScheduleConfig
    from golf.modules.config import BackboneConfig

    lm = GolfLM(vocab_size=64, seq_len=8, backbone=BackboneConfig(model_dim=16, layers="A", num_heads=2, num_kv_heads=1),
                schedule=ScheduleConfig(warmdown_fraction=0.25, min_lr_scale=0.1))
    budget = WallClockBudget(budget_seconds=100, reserve_seconds=20)
    lm._trainer = SimpleNamespace(callbacks=[budget], global_step=10, max_steps=-1)
    for elapsed, expected in [(0, 1.0), (59, 1.0), (60, 1.0), (70, 0.1 + 0.9 * 0.5), (80, 0.1), (90, 0.1)]:
        budget.agreed_elapsed = elapsed
        assert lm.compute_lr_scale() == pytest.approx(expected), elapsed
    # Baseline style: warm-down over N steps at the mean step time so far (10 steps in 70 s -> 7 s/step).
    lm.schedule_config = ScheduleConfig(warmdown_steps=5)
    budget.agreed_elapsed = 70  # 10 s left of the usable 80; warm-down lasts 5 * 7 = 35 s
    assert lm.compute_lr_scale() == pytest.approx(10 / 35)
