from components.embed.stage import *  # noqa: F401,F403  (split in progress)
from components.embed.stage import _cuda_available, _load_encoder  # noqa: F401
