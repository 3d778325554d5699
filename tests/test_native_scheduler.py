"""The native engine's scheduler and block manager, without a model: the seams where batching goes wrong."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from splitserve.generator.engines.native import block_manager as block_manager_module
from splitserve.generator.engines.native.block_manager import BlockManager
from splitserve.generator.engines.native.scheduler import Scheduler, SchedulerOutput
from splitserve.generator.engines.native.sequence import Sequence, SequenceStatus


def make_seq(seq_id: int, prompt: list[int], max_new_tokens: int = 4, stop: frozenset[int] = frozenset()) -> Sequence:
    return Sequence(seq_id=seq_id, token_ids=list(prompt), num_prompt_tokens=len(prompt),
                    max_new_tokens=max_new_tokens, stop_token_ids=stop)


def make_scheduler(num_blocks: int = 64, block_size: int = 4, max_num_seqs: int = 8,
                   max_num_batched_tokens: int = 64, enable_prefix_caching: bool = True) -> Scheduler:
    return Scheduler(BlockManager(num_blocks, block_size, enable_prefix_caching), max_num_seqs,
                     max_num_batched_tokens)


def step(scheduler: Scheduler, token: int = 7) -> tuple[SchedulerOutput, list[Sequence]]:
    output = scheduler.schedule()
    sampled = [token for chunk in output.chunks if chunk.samples]
    return output, scheduler.update(output, sampled)


def run_to_end(scheduler: Scheduler, max_steps: int = 1000) -> None:
    for _ in range(max_steps):
        if not scheduler.has_work:
            return
        step(scheduler)
    raise AssertionError("the scheduler made no progress")


def layout(output: SchedulerOutput) -> list[tuple[int, int, int]]:
    return [(chunk.seq.seq_id, chunk.start, chunk.num_tokens) for chunk in output.chunks]


def check_blocks(manager: BlockManager, live: list[Sequence]) -> None:
    """Every block is held exactly as often as the tables name it, or sits in exactly one free pool."""
    holds: Counter[int] = Counter()
    for seq in live:
        assert len(set(seq.block_table)) == len(seq.block_table), "a table names a block twice"
        holds.update(seq.block_table)
    free_ids, evictable_ids = set(manager._free_block_ids), set(manager._evictable)
    assert len(free_ids) == len(manager._free_block_ids) and not free_ids & evictable_ids
    for block in manager.blocks:
        assert block.ref_count == holds[block.block_id]
        assert (block.ref_count == 0) == (block.block_id in free_ids | evictable_ids)
        if block.ref_count > 1:
            assert manager.is_cached(block.block_id) or block.serial, "only full, hashed blocks are shared"
    assert all(manager.is_cached(block_id) for block_id in evictable_ids)
    assert all(block_id not in free_ids or manager.blocks[block_id].key is None for block_id in free_ids)
    assert manager.num_free_blocks + sum(1 for block in manager.blocks if block.ref_count) == manager.num_blocks
    for key, block_id in manager._key_to_block_id.items():
        assert manager.blocks[block_id].key == key


# Chunked prefill, ordering, admission


def test_chunked_prefill_splits_under_the_budget_and_decodes_come_first() -> None:
    scheduler = make_scheduler(max_num_batched_tokens=10)
    short = make_seq(0, [1, 2, 3], max_new_tokens=10)
    scheduler.add(short)
    assert layout(step(scheduler)[0]) == [(0, 0, 3)]
    scheduler.add(make_seq(1, list(range(100, 125))))
    first, _ = step(scheduler)
    assert layout(first) == [(0, 3, 1), (1, 0, 9)]
    assert [chunk.samples for chunk in first.chunks] == [True, False]
    assert not first.is_decode_only and first.num_tokens == 10
    assert layout(step(scheduler)[0]) == [(0, 4, 1), (1, 9, 9)]
    last, _ = step(scheduler)
    assert layout(last) == [(0, 5, 1), (1, 18, 7)] and last.chunks[1].samples
    decodes, _ = step(scheduler)
    assert layout(decodes) == [(0, 6, 1), (1, 25, 1)] and decodes.is_decode_only


def test_block_table_covers_every_scheduled_position() -> None:
    scheduler = make_scheduler(block_size=4, max_num_batched_tokens=6)
    scheduler.add(make_seq(0, list(range(1, 15))))
    for _ in range(5):
        output = scheduler.schedule()
        for chunk in output.chunks:
            assert chunk.start == chunk.seq.num_computed_tokens
            assert len(chunk.seq.block_table) * 4 >= chunk.start + chunk.num_tokens
        scheduler.update(output, [9 for chunk in output.chunks if chunk.samples])


def test_admission_is_fifo_and_capped_by_max_num_seqs() -> None:
    scheduler = make_scheduler(max_num_seqs=2)
    for seq_id in range(3):
        scheduler.add(make_seq(seq_id, [seq_id + 1] * 3, max_new_tokens=2 + seq_id))
    assert [seq_id for seq_id, _, _ in layout(step(scheduler)[0])] == [0, 1]
    assert scheduler.num_running == 2 and scheduler.num_waiting == 1
    assert [seq.seq_id for seq in step(scheduler)[1]] == [0]
    assert [seq_id for seq_id, _, _ in layout(step(scheduler)[0])] == [1, 2]


def test_head_of_queue_that_lacks_blocks_is_not_overtaken() -> None:
    scheduler = make_scheduler(num_blocks=4, block_size=4)
    scheduler.add(make_seq(0, list(range(1, 11)), max_new_tokens=2))  # 3 blocks
    step(scheduler)
    scheduler.add(make_seq(1, list(range(20, 28))))  # needs 2 blocks, 1 is free
    scheduler.add(make_seq(2, [30]))  # would fit, but arrived later
    output, finished = step(scheduler)
    assert layout(output) == [(0, 10, 1)] and scheduler.num_waiting == 2
    assert [seq.seq_id for seq in finished] == [0]
    assert [seq_id for seq_id, _, _ in layout(step(scheduler)[0])] == [1, 2]


def test_a_prompt_larger_than_the_budget_is_admitted_with_a_partial_chunk() -> None:
    scheduler = make_scheduler(max_num_batched_tokens=8)
    seq = make_seq(0, list(range(1, 21)))
    scheduler.add(seq)
    output, _ = step(scheduler)
    assert layout(output) == [(0, 0, 8)] and not output.chunks[0].samples
    assert seq.status is SequenceStatus.RUNNING and seq.num_computed_tokens == 8 and seq.num_output_tokens == 0


def test_update_wants_one_token_per_sampling_chunk() -> None:
    scheduler = make_scheduler()
    scheduler.add(make_seq(0, [1, 2]))
    output = scheduler.schedule()
    with pytest.raises(ValueError, match="expected 1"):
        scheduler.update(output, [])


def test_empty_sequences_are_refused() -> None:
    with pytest.raises(ValueError):
        make_scheduler().add(make_seq(0, []))


# Prefix caching


def test_prefix_hit_shares_full_blocks_and_leaves_a_token_to_compute() -> None:
    scheduler = make_scheduler(block_size=4)
    manager = scheduler.block_manager
    first = make_seq(0, list(range(1, 13)), max_new_tokens=8)
    scheduler.add(first)
    step(scheduler)
    second = make_seq(1, [*range(1, 9), 50, 51, 52])
    same = make_seq(2, list(range(1, 13)))
    scheduler.add(second)
    scheduler.add(same)
    output, _ = step(scheduler)
    assert layout(output) == [(0, 12, 1), (1, 8, 3), (2, 8, 4)]
    assert second.num_cached_prompt_tokens == 8 and same.num_cached_prompt_tokens == 8
    assert second.block_table[:2] == first.block_table[:2] == same.block_table[:2]
    assert [manager.blocks[block_id].ref_count for block_id in first.block_table[:3]] == [3, 3, 1]
    check_blocks(manager, scheduler.running)


def test_a_prompt_of_whole_blocks_keeps_its_last_block_to_compute() -> None:
    scheduler = make_scheduler(block_size=4)
    scheduler.add(make_seq(0, list(range(1, 9))))
    run_to_end(scheduler)
    again = make_seq(1, list(range(1, 9)))
    scheduler.add(again)
    assert layout(step(scheduler)[0]) == [(1, 4, 4)] and again.num_cached_prompt_tokens == 4


def test_cached_blocks_outlive_their_sequence_and_count_as_free() -> None:
    scheduler = make_scheduler(num_blocks=8, block_size=4)
    scheduler.add(make_seq(0, list(range(1, 11)), max_new_tokens=1))
    run_to_end(scheduler)
    manager = scheduler.block_manager
    assert manager.num_free_blocks == 8 and manager.usage == 0.0 and manager.num_cached_blocks == 2
    later = make_seq(1, [*range(1, 9), 99])
    scheduler.add(later)
    step(scheduler)
    assert later.num_cached_prompt_tokens == 8 and manager.usage == 3 / 8


def test_free_cached_blocks_are_evicted_least_recently_used_and_only_when_needed() -> None:
    manager = BlockManager(num_blocks=4, block_size=2)

    def compute(seq: Sequence) -> None:
        cached = manager.match_prefix(seq)
        manager.allocate(seq, cached, seq.num_tokens - len(cached) * 2)
        seq.num_computed_tokens = seq.num_tokens
        manager.cache_full_blocks(seq)
        manager.free(seq)

    compute(make_seq(0, [1, 2, 3]))  # caches block (1, 2)
    compute(make_seq(1, [4, 5, 6]))  # takes uncached blocks, so (1, 2) survives; caches (4, 5)
    assert manager.num_cached_blocks == 2 and manager.num_free_blocks == 4
    assert len(manager.match_prefix(make_seq(2, [1, 2, 0]))) == 1
    compute(make_seq(3, [1, 2, 0]))  # a hit makes (1, 2) the most recently used
    compute(make_seq(4, [7, 8, 9, 10, 11]))  # three fresh blocks: two uncached, then one eviction
    assert len(manager.match_prefix(make_seq(5, [4, 5, 0]))) == 0
    assert len(manager.match_prefix(make_seq(6, [1, 2, 0]))) == 1


def test_a_hash_collision_never_serves_other_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(block_manager_module, "chain_key", lambda previous_key, token_ids: 0)
    manager = BlockManager(num_blocks=16, block_size=2)
    first = make_seq(0, [1, 2, 3, 4, 5])
    manager.allocate(first, [], 5)
    first.num_computed_tokens = 5
    manager.cache_full_blocks(first)
    assert manager.match_prefix(make_seq(1, [1, 2, 3, 4, 5])) == first.block_table[:1]
    assert manager.match_prefix(make_seq(2, [9, 9, 3, 4, 5])) == []


def test_a_collision_on_a_later_block_checks_the_prefix_it_extends(monkeypatch: pytest.MonkeyPatch) -> None:
    # Keys that forget the chain: (5, 5) after (2, 2) collides with (5, 5) after (3, 3).
    monkeypatch.setattr(block_manager_module, "chain_key", lambda previous_key, token_ids: hash(token_ids))
    manager = BlockManager(num_blocks=16, block_size=2)
    for seq_id, prompt in enumerate([[1, 1, 2, 2, 5, 5, 0], [1, 1, 3, 3, 0]]):
        seq = make_seq(seq_id, prompt)
        manager.allocate(seq, manager.match_prefix(seq), len(prompt))
        seq.num_computed_tokens = len(prompt)
        manager.cache_full_blocks(seq)
    assert len(manager.match_prefix(make_seq(2, [1, 1, 2, 2, 5, 5, 0]))) == 3
    assert len(manager.match_prefix(make_seq(3, [1, 1, 3, 3, 5, 5, 0]))) == 2


def test_prefix_caching_off_shares_nothing() -> None:
    scheduler = make_scheduler(enable_prefix_caching=False)
    scheduler.add(make_seq(0, list(range(1, 13))))
    step(scheduler)
    again = make_seq(1, list(range(1, 13)))
    scheduler.add(again)
    assert layout(step(scheduler)[0])[-1] == (1, 0, 12) and again.num_cached_prompt_tokens == 0
    assert scheduler.block_manager.num_cached_blocks == 0


# Preemption


def test_the_newest_sequence_is_preempted_when_blocks_run_out_and_resumes_later() -> None:
    scheduler = make_scheduler(num_blocks=6, block_size=2, max_num_seqs=2)
    old, new = make_seq(0, [1, 2, 3, 4], max_new_tokens=8), make_seq(1, [5, 6, 7, 8], max_new_tokens=8)
    later = make_seq(2, [9], max_new_tokens=1)
    for seq in (old, new, later):
        scheduler.add(seq)
    preempted: list[Sequence] = []
    for _ in range(4):  # prefill, then decodes at positions 4, 5 and 6: the last needs a fourth block each
        output, _ = step(scheduler)
        preempted += output.preempted
        check_blocks(scheduler.block_manager, scheduler.running)
    assert preempted == [new] and new.status is SequenceStatus.WAITING and list(scheduler.waiting) == [new, later]
    assert new.block_table == [] and new.num_computed_tokens == 0 and new.num_preemptions == 1
    assert new.num_output_tokens == 3 and old.num_preemptions == 0
    assert layout(output) == [(0, 6, 1)]
    run_to_end(scheduler)
    assert old.num_output_tokens == 8 and new.num_output_tokens == 8 and later.is_finished
    assert new.num_cached_prompt_tokens == 0, "set only at the first admission"
    assert scheduler.block_manager.num_free_blocks == 6


def test_a_prefill_chunk_that_cannot_get_blocks_preempts_its_own_sequence() -> None:
    # Only the newest running sequence can be mid-prefill (an older one took the whole budget), so it goes.
    scheduler = make_scheduler(num_blocks=6, block_size=2, max_num_batched_tokens=5)
    old, new = make_seq(0, [1, 2, 3, 4], max_new_tokens=8), make_seq(1, list(range(10, 18)), max_new_tokens=2)
    scheduler.add(old)
    step(scheduler)
    scheduler.add(new)
    assert layout(step(scheduler)[0]) == [(0, 4, 1), (1, 0, 4)]
    output, _ = step(scheduler)  # positions 4..7 of `new` need two blocks; one is free
    assert layout(output) == [(0, 5, 1)] and output.preempted == [new] and new.num_preemptions == 1
    check_blocks(scheduler.block_manager, scheduler.running)
    run_to_end(scheduler)
    assert old.num_output_tokens == 8 and new.num_output_tokens == 2
    assert scheduler.block_manager.num_free_blocks == 6


def test_a_sequence_that_can_never_fit_is_dropped_instead_of_stalling() -> None:
    scheduler = make_scheduler(num_blocks=2, block_size=2)
    too_long = make_seq(0, [1, 2, 3, 4, 5])
    grows_too_long = make_seq(1, [1, 2, 3], max_new_tokens=10)
    scheduler.add(too_long)
    scheduler.add(grows_too_long)
    assert scheduler.schedule().aborted == [too_long] and too_long.is_finished
    run_to_end(scheduler, max_steps=10)
    assert grows_too_long.is_finished and grows_too_long.num_tokens == 5
    assert scheduler.block_manager.num_free_blocks == 2


# Aborts


def test_aborting_waiting_and_running_sequences_returns_every_block() -> None:
    scheduler = make_scheduler(num_blocks=16, block_size=4, max_num_seqs=1)
    running, sharing, waiting = (make_seq(i, list(range(1, 11)), max_new_tokens=50) for i in range(3))
    scheduler.add(running)
    step(scheduler)
    scheduler.max_num_seqs = 2
    scheduler.add(sharing)
    step(scheduler)
    scheduler.add(waiting)
    assert sharing.num_cached_prompt_tokens == 8 and scheduler.num_waiting == 1
    for seq in (running, sharing, waiting):
        scheduler.abort(seq.seq_id)
    scheduler.abort(12345)  # unknown ids are ignored
    output = scheduler.schedule()
    assert output.aborted == [waiting, running, sharing] and not output.chunks and not scheduler.has_work
    assert all(seq.is_finished and seq.block_table == [] for seq in output.aborted)
    assert scheduler.block_manager.num_free_blocks == 16 and scheduler.block_manager.num_cached_blocks == 2
    check_blocks(scheduler.block_manager, [])


def test_abort_takes_effect_at_the_next_schedule_and_ignores_finished_sequences() -> None:
    scheduler = make_scheduler()
    seq = make_seq(0, [1, 2], max_new_tokens=1)
    scheduler.add(seq)
    output = scheduler.schedule()
    scheduler.abort(0)
    assert scheduler.update(output, [3]) == [seq]
    assert scheduler.schedule().aborted == []


# A long random run with the invariants checked every step


def check_step(scheduler: Scheduler, output: SchedulerOutput, was_decoding: set[int],
               kv: dict[int, tuple[int, ...]]) -> None:
    manager, block_size = scheduler.block_manager, scheduler.block_manager.block_size
    assert output.num_tokens <= scheduler.max_num_batched_tokens
    assert scheduler.num_running <= scheduler.max_num_seqs
    positions = [index for index, chunk in enumerate(output.chunks) if chunk.seq.seq_id in was_decoding]
    assert positions == list(range(len(positions))), "decodes come first"
    for seq in scheduler.waiting:
        assert seq.status is SequenceStatus.WAITING and seq.block_table == [] and seq.num_computed_tokens == 0
    for chunk in output.chunks:
        seq = chunk.seq
        assert seq.status is SequenceStatus.RUNNING and chunk.start == seq.num_computed_tokens
        assert len(seq.block_table) * block_size >= chunk.start + chunk.num_tokens

        def slot(position: int, table: list[int] = seq.block_table) -> int:
            return table[position // block_size] * block_size + position % block_size

        # What attention reads must be KV computed for exactly these tokens (prefix hits included)...
        for position in range(chunk.start):
            assert kv[slot(position)] == tuple(seq.token_ids[: position + 1])
        # ...and what it writes lands in blocks nobody else holds.
        for position in range(chunk.start, chunk.start + chunk.num_tokens):
            assert manager.blocks[seq.block_table[position // block_size]].ref_count == 1
            kv[slot(position)] = tuple(seq.token_ids[: position + 1])
    check_blocks(manager, scheduler.running)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("hashing", ["real", "weak", "off"])
def test_random_run_keeps_every_invariant(seed: int, hashing: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if hashing == "weak":  # constant collisions: verification alone must keep the cache honest
        monkeypatch.setattr(block_manager_module, "chain_key", lambda previous_key, token_ids: sum(token_ids) % 3)
    rng = random.Random(seed)
    num_blocks, block_size = rng.choice([(10, 2), (16, 4), (20, 3)])
    scheduler = make_scheduler(num_blocks, block_size, max_num_seqs=rng.randint(3, 6),
                               max_num_batched_tokens=rng.randint(6, 40), enable_prefix_caching=hashing != "off")
    prefixes = [[rng.randint(0, 3) for _ in range(rng.randint(4, 8))] for _ in range(3)]
    sequences: list[Sequence] = []
    kv: dict[int, tuple[int, ...]] = {}
    seen = Counter[str]()
    for _ in range(3000):
        if len(sequences) < 60 and rng.random() < 0.3:
            prompt = rng.choice(prefixes) + [rng.randint(0, 5) for _ in range(rng.randint(1, 8))]
            capacity = num_blocks * block_size - len(prompt)  # what the engine validates before adding
            seq = make_seq(len(sequences), prompt, rng.randint(1, min(30, capacity)), stop=frozenset({5}))
            sequences.append(seq)
            scheduler.add(seq)
        live = [*scheduler.waiting, *scheduler.running]
        if live and rng.random() < 0.04:
            scheduler.abort(rng.choice(live).seq_id)
        was_decoding = {seq.seq_id for seq in scheduler.running if seq.num_tokens - seq.num_computed_tokens == 1}
        output = scheduler.schedule()
        check_step(scheduler, output, was_decoding, kv)
        seen.update(preempted=len(output.preempted), aborted=len(output.aborted))
        scheduler.update(output, [rng.randint(0, 15) for chunk in output.chunks if chunk.samples])  # 5 stops
        check_blocks(scheduler.block_manager, scheduler.running)
        if len(sequences) == 60 and not scheduler.has_work:
            break
    else:
        pytest.fail("the sequences did not all finish")
    assert all(seq.is_finished for seq in sequences)
    assert scheduler.block_manager.num_free_blocks == num_blocks and scheduler.block_manager.usage == 0.0
    num_hits = sum(1 for seq in sequences if seq.num_cached_prompt_tokens)
    assert seen["preempted"] and seen["aborted"], "the run should reach the risky paths"
    assert bool(num_hits) == (hashing != "off")
