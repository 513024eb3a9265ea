"""What adapters share: the Protocols they implement and the pieces every adapter module uses."""

from __future__ import annotations

from daemon.contract import Channel, ChannelContext, ChannelSpec, Probe, Probeable, Readable, Shape

__all__ = ["Channel", "ChannelContext", "ChannelSpec", "Probe", "Probeable", "Readable", "Shape"]
