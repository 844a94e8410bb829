"""Channels: each turns its protocol into InboundMessage and hands it to an async sink."""
