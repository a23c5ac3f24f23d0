"""The challenge clock: validation and compile warm-up are not counted; the stop and the clock are agreed by ranks."""

import time
from types import SimpleNamespace

import pytest
import torch

from golf import agreement
from golf.callbacks.budget import WallClockBudget


@pytest.fixture
def peer_clock(monkeypatch):
    """Plays another rank in the MAX all-reduce: its clock is ``peer_clock["elapsed"]``."""
    peer = {"elapsed": 0.0}
    monkeypatch.setattr(agreement, "all_reduce_max", lambda t: t.clamp_(min=peer["elapsed"]))
    return peer


def fake_trainer(world_size=2):
    return SimpleNamespace(should_stop=False, global_step=0, world_size=world_size)


CPU_MODULE = SimpleNamespace(device=torch.device("cpu"))


def step(cb, trainer, seconds):
    cb.on_train_batch_start(trainer, CPU_MODULE, None, 0)
    time.sleep(seconds)
    trainer.global_step += 1
    cb.on_train_batch_end(trainer, CPU_MODULE, None, None, 0)


def test_validation_and_warmup_time_are_not_counted():
    cb, trainer = WallClockBudget(budget_seconds=100), fake_trainer(world_size=1)
    time.sleep(0.2)  # compile warm-up happens before the first on_train_batch_start
    step(cb, trainer, 0.05)
    cb.on_validation_start(trainer, CPU_MODULE)
    time.sleep(0.3)  # a validation pass
    step(cb, trainer, 0.05)
    assert 0.1 <= cb.elapsed() < 0.2
    assert cb.agreed_elapsed == pytest.approx(cb.elapsed(), abs=0.02)


def test_ranks_agree_on_the_slowest_clock_one_step_late_and_stop_one_step_ahead(peer_clock):
    cb, trainer = WallClockBudget(budget_seconds=10, reserve_seconds=2), fake_trainer()
    peer_clock["elapsed"] = 3.0
    step(cb, trainer, 0.01)  # step 1: its clock is queued, nothing agreed yet
    assert cb.agreed_elapsed == 0.0 and not trainer.should_stop
    peer_clock["elapsed"] = 5.0
    step(cb, trainer, 0.01)  # reads step 1's MAX (3.0; this rank is at 0.01 s): projected 3 + 3 < 8
    assert cb.agreed_elapsed == 3.0 and not trainer.should_stop
    peer_clock["elapsed"] = 7.0
    step(cb, trainer, 0.01)  # reads 5.0, step time 2.0: projected 7 < 8
    assert cb.agreed_elapsed == 5.0 and cb.agreed_step_seconds == 2.0 and not trainer.should_stop
    step(cb, trainer, 0.01)  # reads 7.0: this step ends at about 9 >= 10 - 2, so every rank stops after it
    assert trainer.should_stop and cb.stopped_at_step == 4
    assert cb.agreed_elapsed == 7.0 and cb.fraction() == pytest.approx(7 / 8)


def test_one_process_reads_its_clock_on_the_host_without_a_collective(monkeypatch):
    def no_collective(tensor):
        raise AssertionError("one process must not round-trip its clock through a collective")

    monkeypatch.setattr(agreement, "all_reduce_max", no_collective)
    cb, trainer = WallClockBudget(budget_seconds=0.05), fake_trainer(world_size=1)
    step(cb, trainer, 0.06)
    assert trainer.should_stop and cb.agreed_elapsed == pytest.approx(cb.elapsed(), abs=0.02)


def test_budget_survives_resume():
    cb, trainer = WallClockBudget(budget_seconds=100), fake_trainer(world_size=1)
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
