"""Layer 1, the core: what every stage shares and nothing above it.

- :mod:`~sp2dpo.core.config`: ``params.yaml`` as typed, frozen dataclasses (one module per
  section group);
- :mod:`~sp2dpo.core.schemas`: the pandera schemas of every table;
- :mod:`~sp2dpo.core.artifacts`: validated, atomic reading and writing;
- :mod:`~sp2dpo.core.beta`: the beta artifact reader and its one envelope check;
- :mod:`~sp2dpo.core.sampling`: the one seeded-subset rule;
- :mod:`~sp2dpo.core.errors`: the errors a person can fix;
- :mod:`~sp2dpo.core.entry`: logging, the error guard, ``run_stage`` and JSON printing.

Modules here import only the standard library, third-party packages and each other.
"""
