"""`xray2ct benchmark --suite refine` at chosen sizes (the full suite is tens of CPU minutes):
writes the suite's section and its reliability plot into docs/BENCHMARKS.md.

    .venv/bin/python benchmarks/refine_study.py N_VAL N_TEST N_CURVE N_FINE
"""
import sys
from pathlib import Path

from xray2ct.benchmark import write_section
from xray2ct.refine_suite import refine_suite

docs = Path(__file__).resolve().parents[1] / "docs"
n_val, n_test, n_curve, n_fine = (int(a) for a in sys.argv[1:5])
result = refine_suite(n_val=n_val, n_test=n_test, n_curve=n_curve, n_fine=n_fine, images_dir=docs / "images")
write_section(docs / "BENCHMARKS.md", "refine", result, ".venv/bin/python benchmarks/refine_study.py "
              + " ".join(sys.argv[1:5]), "cpu")
print(result.markdown)
