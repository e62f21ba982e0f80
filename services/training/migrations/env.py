from services.training.storage.tables import Base
from shared.migrations import run_env

run_env(Base.metadata)
