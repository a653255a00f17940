"""The Ray job entry points: ``python -m maas.jobs.train`` and ``python -m maas.jobs.predict``.

In a checkout, ``ray job submit --working-dir . -- python -m jobs.train`` runs the same code through
the thin wrappers in the top-level ``jobs/`` folder; an installed wheel (which ships only ``maas``)
runs them from here.
"""
