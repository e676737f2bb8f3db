"""Many models on many targets: the matrix file and its cells, the executors (local pool, Ray), the matrix report."""
