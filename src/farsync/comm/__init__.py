"""Communication: explicit process groups, collectives, the byte ledger and the WAN emulator."""

from farsync.comm.clock import Clock
from farsync.comm.communicator import Communicator, Handle
from farsync.comm.cost import Collective, LinkModel, wire_bytes, wire_time
from farsync.comm.groups import make_group, open_store
from farsync.comm.ledger import ByteLedger

__all__ = [
    "ByteLedger",
    "Clock",
    "Collective",
    "Communicator",
    "Handle",
    "LinkModel",
    "make_group",
    "open_store",
    "wire_bytes",
    "wire_time",
]
