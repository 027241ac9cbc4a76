"""A plug emulator that speaks the real protocol over TCP and UDP 9999.

It is the test double for everything else in hs100local and a demo for users
without hardware, so it behaves like the firmware (reply shapes per model, error
codes, state kept across commands), not like a mirror of our own client.
"""

from hs100local.emulator.models import MODELS, ModelSpec
from hs100local.emulator.plug import EmulatedPlug

__all__ = ["MODELS", "EmulatedPlug", "ModelSpec"]
