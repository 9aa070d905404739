from mtoframe.testing.conformance import conformance_tests

test_famo = conformance_tests("famo")
test_famo_eval = conformance_tests("famo", extra_forward_mode="eval", gamma=0.0)
