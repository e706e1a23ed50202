"""Protocol logic with no I/O: schemas, codecs, keys, peer and gossip decisions.

Nothing in this package opens a socket, imports asyncio or zmq, or reads the
clock: time arrives as ``now``. Services in ``tazcom.services`` do the I/O.
"""
