from mtoframe.testing.conformance import conformance_tests
from mtoframe_torchjd import METHODS

for _cls in METHODS:
    globals()["test_conformance_" + _cls.name.split(".")[1]] = conformance_tests(_cls.name)
