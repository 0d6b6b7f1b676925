"""Structured channel pruning: dependency groups, importance and budget, physical removal, reconstruction.

groups.py finds which channels must go together, plan.py decides which to keep, removal.py
shrinks the graph, channel_prune.py is the `channel-prune` pass that ties them together.
"""

from onnxopt.passes.prune.channel_prune import ChannelPrune, ChannelPruneConfig
from onnxopt.passes.prune.groups import ChannelGroup, analyse

__all__ = ["ChannelPrune", "ChannelPruneConfig", "ChannelGroup", "analyse"]
