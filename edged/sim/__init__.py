"""edged's residency in simulated time (its own engine), the baselines it is measured against,
synthetic traces and their replay (bench/residency.py, bench/preload.py, `edged trace`)."""
