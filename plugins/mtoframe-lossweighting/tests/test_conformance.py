from mtoframe.testing.conformance import conformance_tests

test_uw = conformance_tests("uw")
test_imtll = conformance_tests("imtll")
test_gls = conformance_tests("gls")
test_si = conformance_tests("si", eps=1e-8)
test_rlw = conformance_tests("rlw", seed=0)
test_dwa = conformance_tests("dwa")
test_stch = conformance_tests("stch", warmup_epochs=0)
# w = T softmax(xi) couples every task's logit, so the balancing loss moves absent tasks' logits too
test_gradnorm = conformance_tests("gradnorm", initial_losses="first_step",
                                  absent_state_moves="w = T softmax(xi) couples every task's logit")
# lambda is renormalised to sum T over all tasks, so an absent task's weight is rescaled with the rest
test_excessmtl = conformance_tests("excessmtl", absent_state_moves="lambda is renormalised over all tasks")
