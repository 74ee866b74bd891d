"""GreenGossip: a Gymnasium environment for green, secure, accurate decentralized learning at the edge.

Importing this package registers ``GreenGossip/EdgeLearning-v3`` (and the flat-observation variant
``GreenGossip/EdgeLearningFlat-v3``); ``gymnasium.make("greengossip:GreenGossip/EdgeLearning-v3")`` imports it
for you. Both ids have a vector entry point: ``gymnasium.make_vec(id, num_envs=B)`` steps B environments as
one batched program (``EdgeLearningVectorEnv``).
"""

from gymnasium.envs.registration import register, registry

from greengossip.envs.config import ConfigError, EnvConfig, load_config
from greengossip.envs.gossip_env import EdgeLearningEnv

__all__ = ["ConfigError", "EdgeLearningEnv", "EnvConfig", "load_config"]

ENV_ID = "GreenGossip/EdgeLearning-v3"
FLAT_ENV_ID = "GreenGossip/EdgeLearningFlat-v3"

if ENV_ID not in registry:
    # The env truncates itself at config.max_rounds (with the deadline penalty); no TimeLimit on top,
    # so that max_rounds from the config is the one deadline.
    register(id=ENV_ID, entry_point="greengossip.envs.gossip_env:EdgeLearningEnv",
             vector_entry_point="greengossip.envs.vector_env:EdgeLearningVectorEnv")
if FLAT_ENV_ID not in registry:
    register(id=FLAT_ENV_ID, entry_point="greengossip.envs.wrappers:make_flat_env",
             vector_entry_point="greengossip.envs.wrappers:make_flat_vector_env")
