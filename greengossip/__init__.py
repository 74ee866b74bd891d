"""GreenGossip: a Gymnasium environment for green, secure and accurate decentralized learning at the edge.

``import greengossip`` registers the environment ids (``GreenGossip/EdgeLearning-v3`` and the
flat-observation ``GreenGossip/EdgeLearningFlat-v3``), so ``gymnasium.make("greengossip:GreenGossip/EdgeLearning-v3")``
and RL Zoo3's ``--gym-packages greengossip`` work. The parts:

* :mod:`greengossip.envs` - the simulator and its Gymnasium, vector and PettingZoo environments;
* :mod:`greengossip.agents` - schedulers: heuristics and trained models behind one interface;
* :mod:`greengossip.training` - training, evaluation and the ``greengossip`` command;
* :mod:`greengossip.configs` - the shipped scenario and training configs, found by name.
"""

from __future__ import annotations

from pathlib import Path

# In a source checkout the subpackages sit beside this folder (envs/, agents/, training/, configs/);
# the wheel maps them under greengossip/ with setuptools' package-dir. Looking beside it lets the tests
# and benchmarks run from a checkout whatever way the project was installed.
_CHECKOUT = Path(__file__).resolve().parent.parent
if not (Path(__file__).resolve().parent / "envs").is_dir() and (_CHECKOUT / "envs" / "__init__.py").is_file():
    __path__.append(str(_CHECKOUT))  # noqa: F821  (the package's own __path__)

from greengossip.envs import ENV_ID, FLAT_ENV_ID, ConfigError, EdgeLearningEnv, EnvConfig, load_config  # noqa: E402

__version__ = "0.5.0"
__all__ = ["ENV_ID", "FLAT_ENV_ID", "ConfigError", "EdgeLearningEnv", "EnvConfig", "__version__", "load_config"]
