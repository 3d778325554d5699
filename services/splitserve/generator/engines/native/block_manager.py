"""Paged KV blocks for the native engine: a free list, reference counts and a prefix cache of full blocks.

Plain Python (no torch). A full block is keyed by a hash of its tokens chained with the previous block's
key. A hit is verified against the block's stored tokens and the identity of the prefix it extends, so a
hash collision can cost a cache miss but never serve KV computed for other tokens.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict, deque
from dataclasses import dataclass

from splitserve.generator.engines.native.sequence import Sequence

ROOT_KEY = -1  # the "previous key" of a sequence's first block


def chain_key(previous_key: int, token_ids: tuple[int, ...]) -> int:
    """The prefix-cache key of a full block: its tokens chained with the previous block's key."""
    # Python's hash of ints and tuples is not salted per process; keys never leave the process anyway.
    return hash((previous_key, token_ids))


@dataclass(slots=True)
class Block:
    """One KV block: how many sequences hold it and, once full and hashed, which token prefix it ends."""

    block_id: int
    ref_count: int = 0
    key: int | None = None  # chain key; None while the block is not full (or caching is off)
    token_ids: tuple[int, ...] = ()
    # Identity of the exact token prefix that ends with this block (shared by duplicates; 0: none).
    # Serials are never reused, so a child whose parent was evicted can no longer be matched.
    serial: int = 0
    parent_serial: int = 0

    def reset(self) -> None:
        self.key, self.token_ids, self.serial, self.parent_serial = None, (), 0, 0


class BlockManager:
    """Hands out KV blocks to sequences and shares full blocks between sequences with a common prefix."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"num_blocks and block_size must be positive, got {num_blocks} and {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(block_id) for block_id in range(num_blocks)]
        self._free_block_ids: deque[int] = deque(range(num_blocks))  # free and holding nothing worth keeping
        self._evictable: OrderedDict[int, None] = OrderedDict()  # free but cached; least recently used first
        self._key_to_block_id: dict[int, int] = {}
        self._serials = itertools.count(1)

    @property
    def num_free_blocks(self) -> int:
        return len(self._free_block_ids) + len(self._evictable)

    @property
    def num_cached_blocks(self) -> int:
        return len(self._key_to_block_id)

    @property
    def usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_blocks

    def num_blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def is_cached(self, block_id: int) -> bool:
        block = self.blocks[block_id]
        return block.key is not None and self._key_to_block_id.get(block.key) == block_id

    def match_prefix(self, seq: Sequence) -> list[int]:
        """Block ids of the longest cached chain of seq's full blocks; at least one token is left to compute."""
        if not self.enable_prefix_caching:
            return []
        cached: list[int] = []
        key, serial = ROOT_KEY, 0
        # The model needs a forward of the last token to sample, so that token's block is never a hit.
        for index in range((seq.num_tokens - 1) // self.block_size):
            token_ids = self._block_tokens(seq, index)
            key = chain_key(key, token_ids)
            block = self._lookup(key, token_ids, serial)
            if block is None:
                break
            cached.append(block.block_id)
            serial = block.serial
        return cached

    def can_allocate(self, cached: list[int], num_tokens: int) -> bool:
        """Whether the blocks `cached` plus fresh blocks for num_tokens tokens after them are available."""
        # Taking a free cached block removes it from the free pool just as a fresh block would.
        num_free_hits = sum(1 for block_id in cached if self.blocks[block_id].ref_count == 0)
        return self.num_blocks_for(num_tokens) <= self.num_free_blocks - num_free_hits

    def allocate(self, seq: Sequence, cached: list[int], num_tokens: int) -> None:
        """Gives seq the cached prefix (from match_prefix) and blocks for its next num_tokens tokens."""
        for block_id in cached:
            self._take_cached(block_id)
        seq.block_table = list(cached)
        seq.num_hashed_blocks = len(cached)
        seq.num_computed_tokens = len(cached) * self.block_size
        self.append_slots(seq, num_tokens)

    def can_append(self, seq: Sequence, num_tokens: int) -> bool:
        """Whether seq's table can grow to cover its next num_tokens tokens."""
        return self._num_missing_blocks(seq, num_tokens) <= self.num_free_blocks

    def append_slots(self, seq: Sequence, num_tokens: int) -> None:
        """Grows seq's table to cover positions [0, num_computed_tokens + num_tokens)."""
        for _ in range(self._num_missing_blocks(seq, num_tokens)):
            seq.block_table.append(self._take_fresh())

    def free(self, seq: Sequence) -> None:
        """Drops seq's hold on its blocks; cached ones stay in the cache until evicted."""
        # Tail blocks first, so they are evicted before the head blocks other prompts are likelier to share.
        for block_id in reversed(seq.block_table):
            self._release(block_id)
        seq.block_table = []
        seq.num_hashed_blocks = 0

    def cache_full_blocks(self, seq: Sequence) -> None:
        """Registers in the prefix cache the blocks of seq that became full of computed tokens."""
        num_full_blocks = seq.num_computed_tokens // self.block_size
        if self.enable_prefix_caching:
            for index in range(seq.num_hashed_blocks, num_full_blocks):
                self._register(seq, index)
        seq.num_hashed_blocks = max(seq.num_hashed_blocks, num_full_blocks)

    def _block_tokens(self, seq: Sequence, index: int) -> tuple[int, ...]:
        return tuple(seq.token_ids[index * self.block_size : (index + 1) * self.block_size])

    def _num_missing_blocks(self, seq: Sequence, num_tokens: int) -> int:
        return max(0, self.num_blocks_for(seq.num_computed_tokens + num_tokens) - len(seq.block_table))

    def _lookup(self, key: int, token_ids: tuple[int, ...], parent_serial: int) -> Block | None:
        block_id = self._key_to_block_id.get(key)
        if block_id is None:
            return None
        block = self.blocks[block_id]
        # The key is only a hash: the tokens and the prefix they extend must both be the same.
        return block if block.token_ids == token_ids and block.parent_serial == parent_serial else None

    def _register(self, seq: Sequence, index: int) -> None:
        block = self.blocks[seq.block_table[index]]
        parent_key, parent_serial = self._parent_of(seq, index)
        block.token_ids = self._block_tokens(seq, index)
        block.key = chain_key(parent_key, block.token_ids)
        block.parent_serial = parent_serial
        twin = self._lookup(block.key, block.token_ids, parent_serial)
        if twin is not None:
            # Another sequence computed the same prefix: same KV, so its children may chain from either.
            block.serial = twin.serial
            return
        block.serial = next(self._serials)
        # On a collision the first block keeps the key; this one is simply not findable.
        self._key_to_block_id.setdefault(block.key, block.block_id)

    def _parent_of(self, seq: Sequence, index: int) -> tuple[int, int]:
        if index == 0:
            return ROOT_KEY, 0
        parent = self.blocks[seq.block_table[index - 1]]
        assert parent.key is not None, "blocks are hashed in order"
        return parent.key, parent.serial

    def _take_cached(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self._evictable[block_id]
        block.ref_count += 1

    def _take_fresh(self) -> int:
        if self._free_block_ids:
            block_id = self._free_block_ids.popleft()
        elif self._evictable:
            block_id, _ = self._evictable.popitem(last=False)
            self._evict(block_id)
        else:
            raise RuntimeError("no free KV block (can_allocate / can_append must be checked first)")
        self.blocks[block_id].ref_count = 1
        return block_id

    def _evict(self, block_id: int) -> None:
        block = self.blocks[block_id]
        assert block.key is not None
        del self._key_to_block_id[block.key]
        block.reset()

    def _release(self, block_id: int) -> None:
        block = self.blocks[block_id]
        block.ref_count -= 1
        if block.ref_count > 0:
            return
        if self.is_cached(block_id):
            self._evictable[block_id] = None  # most recently used end
        else:
            block.reset()
            self._free_block_ids.append(block_id)
