from mtoframe.testing.conformance import conformance_tests

test_conformance = conformance_tests("dbmtl")
