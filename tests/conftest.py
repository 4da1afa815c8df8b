import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # toy_suite for tests and sampler workers

# Keep the fast suite predictable on 2-core machines and CI.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
