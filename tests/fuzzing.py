# -*- test-case-name: tests.test_fuzz,tests.test_fuzz_public_port_h2,tests.test_fuzz_transcoder_link -*-
"""
Helpers shared by the seeded fuzz tests.

Each fuzz test runs a fixed number of seeded cases per round, one round in
the suite. Set C{LIVEPEER_FUZZ_ROUNDS} (a whole number) for a longer run:
with the same seed (C{LIVEPEER_FUZZ_SEED}) the first round's cases come
first, then new ones.
"""

import os

HTTP_BYTES = b"\r\n:\x00 \t%/"
"""Bytes that split or confuse HTTP request lines and headers."""

JSON_BYTES = b'{}[]":,0-e\\'
"""Bytes that split or confuse JSON text."""


def mutate(rng, data, insertable):
    """
    C{data} with a few random bytes flipped, deleted, or inserted from
    C{insertable}, drawn from the C{random.Random} C{rng}.
    """
    data = bytearray(data)
    for _ in range(rng.randrange(1, 6)):
        if not data:
            data.append(rng.getrandbits(8))
            continue
        position = rng.randrange(len(data))
        action = rng.randrange(3)
        if action == 0:
            data[position] ^= 1 << rng.randrange(8)
        elif action == 1:
            data.insert(position, rng.choice(insertable))
        else:
            del data[position]
    return bytes(data)


def fuzzCases(perRound):
    """
    How many cases a fuzz test runs: C{perRound} times the rounds asked for
    in C{LIVEPEER_FUZZ_ROUNDS} (1 when it is not set).
    """
    return perRound * int(os.environ.get("LIVEPEER_FUZZ_ROUNDS", "1"))
