"""Wire protocols and front ends: command line, JACK, OSC, MIDI, HTTP.

Each module translates messages from the outside world into :mod:`engine` calls.
"""
