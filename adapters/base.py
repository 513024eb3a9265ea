"""What adapters share: the Protocol they implement and the pieces every adapter module uses."""

from __future__ import annotations

from daemon.channel import Channel, ChannelContext, ChannelSpec, Shape

__all__ = ["Channel", "ChannelContext", "ChannelSpec", "Shape"]
