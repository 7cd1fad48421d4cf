# -*- test-case-name: tests.test_fuzz,tests.test_fuzz_public_port_h2,tests.test_fuzz_transcoder_link -*-
"""
Helpers shared by the seeded fuzz tests.
"""

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
