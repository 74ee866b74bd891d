"""The shipped configs: scenarios (``*.yaml``), training recipes (``train/``) and RL Zoo3 hyperparameters
(``zoo/``). Found by name with :func:`greengossip.envs.config.config_path`."""
