from typing import Any

# What every trainer reads its settings from: a tuner.config.schema.TrialConfig (attributes, `.updated(...)`). The
# models sit below the tuner and do not import it, so to the type checker the config is Any.
TrialConfig = Any
