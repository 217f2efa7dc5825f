"""Collective algorithms built on the communicator: the quantized ring all-reduce, the PowerSGD-style
low-rank all-reduce, BTARD's butterfly shard exchange and the gather path (all-gather of encoded messages).

They decide how bytes move between ranks; every one of them encodes with the codecs of
:mod:`farsync.compress` and pays the emulated link through the communicator's
:class:`~farsync.comm.link.LinkEmulator`. What to send and how to combine it is the reducers' business.
"""
