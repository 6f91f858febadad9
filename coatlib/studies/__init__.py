"""The book's studies: experiments run once through a command (``python -m coatlib.studies``), their records
read by the chapters.

* ``coatlib.studies.layouts``: the layout study of the paper's section 2.2 in two regimes, its
  design and its record; ``coatlib.studies.layouts_run`` runs it (``python -m coatlib.studies layouts``).
* ``coatlib.studies.inside``: the models of the chapter "Inside a trained CoAtNet"
  (``python -m coatlib.studies inside``); ``coatlib.studies.inside_record`` reads their record.
* ``coatlib.studies.stats``: intervals over seeds and verdicts on claimed orderings.
* ``coatlib.studies.records``: what every study shares (its record, a worker pool, its results folder).
* ``coatlib.studies.command``: the command line.
"""
