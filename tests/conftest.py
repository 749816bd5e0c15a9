"""Suite-wide test settings.

Tests run with one intra-op thread (and so do the processes they spawn, through
OMP_NUM_THREADS): the models under test are tiny, and on a 2-core machine several processes
each using every core oversubscribe it badly (small matmuls ran ~100x slower). Results do not
depend on speed, and a fixed thread count keeps CPU arithmetic reproducible across processes.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
