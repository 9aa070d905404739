from mtoframe.testing.conformance import conformance_tests

for _name in ("alignedmtl", "graddrop", "gradvac", "imtlg", "mgda", "pcgrad", "upgrad"):
    globals()[f"test_conformance_{_name}"] = conformance_tests(_name)
