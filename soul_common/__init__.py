"""Code both deployables run: the reconciler (in every runner and in the scheduled `reconcile` function) and the
Pub/Sub publisher it uses. Imports nothing from `functions` or `gpu_runner`."""
