"""Zero-code capture: ``clearml-hooks run`` and the propagation of a task to child processes.

A process that owns a task (``clearml-hooks run``, or a script's ``Task.init``) names it in
environment variables and puts ``boot/sitecustomize.py`` on ``PYTHONPATH``; every Python child
(torchrun workers, ``torch.multiprocessing.spawn``, multiprocessing spawn/forkserver,
``subprocess``) then joins that task instead of needing a ``Task.init`` of its own.
"""
