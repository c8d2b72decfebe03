import os

from hypothesis import settings

settings.register_profile("default", deadline=None)
settings.load_profile("default")

os.environ.setdefault("STRATA_STORE", os.path.join(os.getcwd(), "build", "test-store-unused"))
