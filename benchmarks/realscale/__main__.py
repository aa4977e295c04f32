"""`python -m benchmarks.realscale`: the real-scale benchmark's command line (run.py)."""

from benchmarks.realscale.run import main

main()
