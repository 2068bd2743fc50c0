"""Where an update changed the weights ("The Path Not Taken"): metrics.py computes
bf16 sparsity, principal-weight overlap, principal angles and spectrum drift;
report.py writes them as JSON, plots and a page (``rlsignals diff-report``)."""
