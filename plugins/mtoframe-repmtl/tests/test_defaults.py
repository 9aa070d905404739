"""Rep-MTL's shipped defaults are the documented ones: the option class, the method docstring,
``defaults_reproduce`` and the plugin README state the same λ_tsr, λ_csa and τ."""

from __future__ import annotations

import re
from pathlib import Path

from mtoframe_repmtl import RepMTL
from mtoframe_repmtl.repmtl import RepMTLOptions

NUM = r"([0-9]*\.?[0-9]+)"


def _defaults() -> tuple[float, float, float]:
    o = RepMTLOptions()
    return o.lambda_tsr, o.lambda_csa, o.tau


def test_docstring_states_the_defaults() -> None:
    doc = RepMTL.__doc__ or ""
    lam = re.search(r"``lambda_tsr``, ``lambda_csa`` \[" + NUM + r", " + NUM + r"\]", doc)
    tau = re.search(r"``tau`` \[" + NUM + r"\]", doc)
    assert lam and tau, "the docstring's option list must give the defaults in brackets"
    assert (float(lam[1]), float(lam[2]), float(tau[1])) == _defaults()


def test_defaults_reproduce_states_the_defaults() -> None:
    text = RepMTL.defaults_reproduce
    lam_tsr, lam_csa, tau = _defaults()
    assert lam_tsr == lam_csa, "the sweep ties λ_tsr = λ_csa; document separate values if they differ"
    assert re.search(r"λ_tsr = λ_csa = " + NUM, text)[1] == f"{lam_tsr:g}"
    assert re.search(r"τ = " + NUM, text)[1] == f"{tau:g}"


def test_readme_states_the_defaults() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    lam_tsr, _, tau = _defaults()
    m = re.search(r"\(λ = " + NUM + r" each; τ = " + NUM, readme)
    assert m and (float(m[1]), float(m[2])) == (lam_tsr, tau)
