"""OSC: the ``/riff`` namespace over UDP.

``server`` receives, validates and dispatches messages and bundles, and answers errors, pings
and state queries; ``feedback`` sends parameter changes and status to subscribed controllers
(at most 30 Hz per address, latest wins; the peer moving an address is skipped for a short
hold) and decides where replies go (the sender, plus the subscribers listening for a sender
that sends from a throwaway port); ``access`` decides which source networks are served and
whether OSC may write files (record, preset save, MIDI learn).

Threading model: everything runs on the daemon's asyncio loop (a datagram protocol); nothing
here blocks or touches the audio thread.
"""
