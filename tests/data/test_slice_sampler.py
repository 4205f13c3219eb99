"""EpochSampler: each item exactly once per epoch across ranks, equal steps, exact resume."""
import pytest

from mrifoundry.tasks.data.samplers import EpochSampler


def _ranks(n, batch_size, world_size=2, **kw):
    return [EpochSampler(n, batch_size, rank=r, world_size=world_size, **kw) for r in range(world_size)]


@pytest.mark.parametrize("n,batch_size,world_size", [
    (2, 4, 2), (3, 4, 2), (10, 4, 2), (17, 4, 2), (16, 4, 2), (33, 5, 2), (5, 1, 2), (7, 3, 3), (1, 8, 1),
])
def test_epoch_partitions_items_with_equal_steps(n, batch_size, world_size):
    samplers = _ranks(n, batch_size, world_size)
    for epoch in range(2):
        per_rank = []
        for s in samplers:
            s.set_epoch(epoch)
            per_rank.append(list(s))
        steps = {len(b) for b in per_rank}
        assert steps == {len(samplers[0])}  # every rank the same number of steps
        seen = [i for batches in per_rank for b in batches for i in b]
        assert sorted(seen) == list(range(n))  # union is range(n), no duplicates
        sizes = [len(b) for batches in per_rank for b in batches]
        assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
        if batch_size > 1:
            assert max(sizes) <= batch_size
        # one step = one global batch: the ranks' batches at step k are disjoint slices
        for k in range(len(samplers[0])):
            assert not set(per_rank[0][k]) & set(per_rank[-1][k]) or world_size == 1


def test_epochs_and_seeds_change_order():
    s = EpochSampler(50, 5, seed=1)
    first = list(s)
    s.set_epoch(1)
    second = list(s)
    assert first != second
    assert list(EpochSampler(50, 5, seed=1)) == first
    assert list(EpochSampler(50, 5, seed=2)) != first
    assert [i for b in EpochSampler(12, 5, shuffle=False) for i in b] == list(range(12))


def test_resume_mid_epoch_gives_exactly_the_rest():
    n, bs = 23, 3
    for rank in range(2):
        full = EpochSampler(n, bs, rank=rank, world_size=2, seed=4)
        full.set_epoch(3)
        all_batches = list(full)

        run = EpochSampler(n, bs, rank=rank, world_size=2, seed=4)
        run.set_epoch(3)
        it = iter(run)
        done = [next(it) for _ in range(2)]
        state = run.state_dict()
        assert (state["epoch"], state["step"]) == (3, 2)

        resumed = EpochSampler(n, bs, rank=rank, world_size=2, seed=4)
        resumed.load_state_dict(state)
        resumed.set_epoch(3)  # the trainer's loop calls this again; must not restart the epoch
        rest = list(resumed)
        assert done + rest == all_batches
        resumed.set_epoch(4)
        assert len(list(resumed)) == len(resumed)


def test_state_dict_with_consumed_steps_and_mismatch():
    s = EpochSampler(20, 2, seed=0)
    it = iter(s)
    for _ in range(5):  # a DataLoader prefetches ahead of training
        next(it)
    assert s.state_dict(consumed_steps=3)["step"] == 3
    other = EpochSampler(21, 2, seed=0)
    with pytest.raises(ValueError):
        other.load_state_dict(s.state_dict())
    with pytest.raises(ValueError):
        EpochSampler(20, 2).load_state_dict({"epoch": 0, "step": 99})


def test_invalid_arguments():
    with pytest.raises(ValueError, match="ranks"):
        EpochSampler(1, 4, rank=0, world_size=2)
    with pytest.raises(ValueError):
        EpochSampler(10, 0)
    with pytest.raises(ValueError):
        EpochSampler(10, 2, rank=2, world_size=2)
