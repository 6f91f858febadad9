"""Teaching tools: the exercise checks (``exercises``, one module per chapter), notebook
re-execution for authors (``book``) and the student edition and grader for instructors
(``coursework``). The model code lives one level up."""
