"""One function per pipeline stage: typed arguments in, the job's record out (the dict it also
writes to info.json / metrics.json). The ``pbu`` command only parses its arguments and calls
these; a notebook or script calls them directly::

    from pbu.jobs.train import pretrain, oracle
    from pbu.jobs.fisher import fisher
    from pbu.jobs.unlearn import unlearn

    rec = pretrain("results/data/mnist5k.pt", arch="small_cnn", seed=0, recipe={...},
                   out_model="original.pt", out_info="original.json", device="cpu")
    rec = unlearn("results/data/mnist5k.pt", model="original.pt", forget=2, method="finetune",
                  hparams={...}, seed=0, out_model="ft.pt", out_history="h.json",
                  out_info="ft.json")

=================  ===========================================  ==================
module             functions                                    ``pbu`` command
=================  ===========================================  ==================
``data``           ``download``, ``download_weights``           download, download-weights
``train``          ``pretrain``, ``oracle``                     pretrain, oracle
``fisher``         ``fisher``                                   fisher
``unlearn``        ``unlearn``, ``list_methods``                unlearn, methods
``tune``           ``tune``                                     tune
``evaluate``       ``evaluate``                                 evaluate
``results``        ``aggregate``, ``track``, ``report``         aggregate, track, report
``common``         devices, loading inputs with clear errors,   (shared)
                   the resource record
=================  ===========================================  ==================

Bad arguments or inputs raise :class:`pbu.errors.UsageError` (or ``CheckpointError`` for a bad
file), naming the problem. The package re-exports nothing: a function named like its module
would be shadowed by the module once imported (the ``pbu.evaluate`` collision of issue 16).
"""
