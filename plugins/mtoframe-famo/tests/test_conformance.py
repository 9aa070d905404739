from mtoframe.testing.conformance import conformance_tests

# FAMO moves every logit with Adam (momentum, weight decay), present or not, as the reference does
_MOVES = "Adam's momentum and weight decay act on every task's logit"
test_famo = conformance_tests("famo", absent_state_moves=_MOVES)
test_famo_eval = conformance_tests("famo", extra_forward_mode="eval", gamma=0.0, absent_state_moves=_MOVES)
