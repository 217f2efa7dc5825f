"""Collective algorithms built on the communicator: the quantized ring all-reduce and its wire codecs,
the PowerSGD-style low-rank all-reduce and BTARD's butterfly shard exchange.

They decide how bytes move between ranks; what to send and how to combine it is the reducers' business.
"""
