"""``greengossip deploy``: the simulator's gossip round played by one process per node over torch.distributed.

- ``messages``: what a broadcast looks like on the wire (full, 8-bit, top-k) and the byte meter.
- ``node``: one node's part of the world and its round (training, sending, receiving, mixing, trust).
- ``coordinator``: the round as the env sees it, assembled from the nodes' reports.
- ``launch``: starting, watching and stopping the processes.
- ``report``: the same config and seed in the simulator and in the deployment, round by round.
- ``command``: the command line.
"""
