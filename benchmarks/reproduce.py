"""Re-run the five papers' comparisons and write docs/results/ (the same command as ``lowbit reproduce``).

python benchmarks/reproduce.py --quick       # digits, 1 seed, < 10 minutes on 2 cores
python benchmarks/reproduce.py               # Fashion-MNIST, 3 seeds, about 2-2.5 hours; resumable
python benchmarks/reproduce.py --dry-run     # plan and time estimate
python benchmarks/reproduce.py --help        # --only, --seeds, --out, --fresh, --report-only, --threads
"""

import sys

from lowbit.cli import main

if __name__ == "__main__":
    sys.exit(main(["reproduce", *sys.argv[1:]]))
