from components.registry.gate import *  # noqa: F401,F403  (split in progress)
