"""The book's studies: experiments run once through a command, their records read by the chapters.

* ``coatlib.studies.stats``: intervals over seeds and verdicts on claimed orderings.
* ``coatlib.studies.layouts``: the layout study of the paper's section 2.2 in two regimes
  (``python -m coatlib.experiments layouts``).
"""
