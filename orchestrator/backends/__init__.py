"""Where workers run: one protocol (`base.ProcessPool`), a backend per place.

``local`` starts processes on this machine; ``dask`` starts them on the nodes of a Dask cluster
and lets them connect back. The supervisor sees only `base.ProcessPool` and `base.WorkerHandle`.
"""
